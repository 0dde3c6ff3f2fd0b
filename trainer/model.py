"""The model one training step runs: the frozen LLM, the trainable front end and the prompt layout.

``Model.loss`` is the training forward (audio span assembled into the prompt, loss on target tokens
only); ``Model.generate`` gives the greedy evaluation samples.
"""

from __future__ import annotations

from typing import Any


def target_loss(llm: Any, batch: Any) -> tuple[Any, Any]:
    """Per-row summed cross-entropy on target tokens and per-row target-token counts.

    Only the target positions go through the LM head (a 4096 x 151k logit matrix per row would
    dominate memory otherwise).
    """
    import torch
    import torch.nn.functional as F

    hidden = llm.get_decoder()(inputs_embeds=batch.inputs_embeds,
                               attention_mask=batch.attention_mask).last_hidden_state
    labels = batch.labels[:, 1:]
    keep = labels != -100
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_loss = F.cross_entropy(logits, labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    batch_size = labels.shape[0]
    sums = torch.zeros(batch_size, device=logits.device).index_add(0, rows, token_loss)
    counts = torch.zeros(batch_size, device=logits.device).index_add(0, rows, torch.ones_like(token_loss))
    return sums, counts


class Model:
    """The frozen LLM, the trainable front end and the prompt layout, with one step's forward."""

    def __init__(self, llm: Any, frontend: Any, layout: Any, max_seq_len: int, device: Any,
                 autocast_dtype: Any, cached: bool) -> None:
        import torch

        self.llm, self.frontend, self.layout = llm, frontend, layout
        self.max_seq_len, self.device = max_seq_len, device
        self.autocast_dtype, self.cached = autocast_dtype, cached
        self.head_ids = torch.tensor(layout.head_ids, dtype=torch.long)

    def autocast(self) -> Any:
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def audio(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Front-end output for a collated batch (raw features, or second-level cache rows)."""
        from alarm.trainer.adapters import AdapterOutput

        feats = {k: v.to(self.device, non_blocking=True).float() for k, v in batch["feats"].items()}
        lengths = {k: v.to(self.device) for k, v in batch["lengths"].items()}
        if self.cached:  # rows are frozen adapter outputs stored as (N, 1, D)
            adapted = {k: AdapterOutput(v.squeeze(2), lengths[k]) for k, v in feats.items()}
            return self.frontend({}, {}, adapted=adapted)
        return self.frontend(feats, lengths)

    def loss(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Per-row target loss sums and token counts for a collated batch."""
        from alarm.trainer.sequence import assemble_batch

        with self.autocast():
            audio, audio_lengths = self.audio(batch)
            assembled = assemble_batch(audio, audio_lengths, self.head_ids, batch["prompt_ids"],
                                       batch["target_ids"], self.llm.get_input_embeddings(), self.max_seq_len)
            return target_loss(self.llm, assembled)

    def generate(self, batch: dict[str, Any], tokenizer: Any, max_new_tokens: int) -> list[str]:
        """Greedy answers for each row of a batch (evaluation samples)."""
        import torch

        from alarm.trainer.sequence import prompt_embeds

        texts = []
        with self.autocast():
            audio, audio_lengths = self.audio(batch)
            for i in range(audio.shape[0]):
                embeds = prompt_embeds(audio[i], int(audio_lengths[i]), self.head_ids, batch["prompt_ids"][i],
                                       self.llm.get_input_embeddings())
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, temperature=None, top_p=None, top_k=None,
                                        pad_token_id=tokenizer.pad_token_id)
                texts.append(tokenizer.decode(out[0], skip_special_tokens=False))
        return texts
