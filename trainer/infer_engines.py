"""The two generation backends of ``trainer.infer``: prompt embeddings in, generated token ids out.

A backend holds the frozen LLM (or the engine serving it) and its input embedding table, and
continues ``(L, D)`` prefixes by at most a per-prefix number of tokens. Both return a
``Generation`` cut the same way (at the first end-of-turn token, within the limit), so the
listener's budget forcing is the same whichever engine runs:

- ``TransformersBackend``: batched ``generate`` on ``AutoModelForCausalLM`` (left padding), everywhere;
- ``VllmBackend``: ``rephrase.engine_vllm.EmbedsEngine`` (the only module that imports vllm), where
  vLLM is installed; only the embedding table is loaded here, to embed the text around the audio.

``build_backend`` picks one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMPT_ROOM = 4096  # tokens kept for the prompt (head, audio span, question) in vLLM's max_model_len


@dataclass
class Generation:
    """Tokens generated for one request so far and how the last call ended."""

    ids: list[int] = field(default_factory=list)
    stopped: bool = False
    """Ended on an end-of-turn token (not counted in ``ids``)."""


def cut_generation(ids: list[int], limit: int, eos_ids: list[int]) -> Generation:
    """Keep at most ``limit`` tokens, stopping before the first end-of-turn token."""
    ids = ids[:limit]
    stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
    return Generation(ids if stop is None else ids[:stop], stop is not None)


class TransformersBackend:
    """Batched ``generate`` from prompt embeddings on the frozen ``AutoModelForCausalLM`` (left padding)."""

    def __init__(self, llm_path: str, device: Any, dtype: Any, eos_ids: list[int], pad_id: int,
                 sampling: dict[str, Any], seed: int) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype).to(device).eval()
        self.llm.requires_grad_(False)
        # Sampling is set per call; the model's own defaults (do_sample, temperature) must not leak in.
        self.llm.generation_config = GenerationConfig(eos_token_id=list(eos_ids), pad_token_id=pad_id)
        self.embed = self.llm.get_input_embeddings()
        self.hidden_size = int(self.llm.config.hidden_size)
        self.eos_ids, self.pad_id, self.sampling, self.seed = list(eos_ids), pad_id, sampling, seed

    def generate(self, prefixes: list[Any], limits: list[int]) -> list[Generation]:
        """Continue each ``(L, D)`` prefix by at most its limit of tokens."""
        import torch
        from transformers import GenerationConfig

        width, dim = max(len(p) for p in prefixes), prefixes[0].shape[-1]
        inputs = prefixes[0].new_zeros((len(prefixes), width, dim))
        mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=inputs.device)
        for row, prefix in enumerate(prefixes):
            inputs[row, width - len(prefix):] = prefix
            mask[row, width - len(prefix):] = 1
        gen_cfg = GenerationConfig(max_new_tokens=max(limits), eos_token_id=self.eos_ids,
                                   pad_token_id=self.pad_id, num_beams=1, **self.sampling)
        if self.sampling["do_sample"]:  # one generator for the batch: rows depend on their batch mates
            torch.manual_seed(self.seed)
        with torch.inference_mode():
            out = self.llm.generate(inputs_embeds=inputs, attention_mask=mask, generation_config=gen_cfg)
        # With inputs_embeds alone, generate returns only the new tokens.
        return [cut_generation(out[row].tolist(), limit, self.eos_ids) for row, limit in enumerate(limits)]


class VllmBackend:
    """vLLM offline engine fed with prompt embeddings (``enable_prompt_embeds``)."""

    def __init__(self, llm_path: str, device: Any, dtype: Any, eos_ids: list[int], sampling: dict[str, Any],
                 seed: int, max_model_len: int) -> None:
        from alarm.rephrase.engine_vllm import EmbedsEngine

        self.engine = EmbedsEngine(llm_path, str(dtype).removeprefix("torch."), seed, max_model_len, device.type)
        self.embed = load_input_embeddings(llm_path, dtype).to(device)
        self.hidden_size = int(self.embed.weight.shape[1])
        self.eos_ids, self.sampling, self.seed = list(eos_ids), sampling, seed

    def generate(self, prefixes: list[Any], limits: list[int]) -> list[Generation]:
        """One engine call for all prefixes, with the sampling settings transformers would use."""
        s = self.sampling
        outputs = self.engine.generate(
            prefixes, limits, temperature=s.get("temperature", 0.0) if s["do_sample"] else 0.0,
            top_p=s.get("top_p") or 1.0, top_k=s.get("top_k") or -1,
            seed=self.seed if s["do_sample"] else None, stop_token_ids=self.eos_ids)
        return [cut_generation(ids, limit, self.eos_ids) for ids, limit in zip(outputs, limits, strict=True)]

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than at interpreter exit."""
        self.engine.close()


def load_input_embeddings(llm_path: str, dtype: Any) -> Any:
    """The LLM's input embedding table alone (vLLM holds the model; we only embed text around the audio).

    Raises:
        FileNotFoundError: No ``embed_tokens.weight`` in the model's safetensors.
    """
    import torch
    from safetensors import safe_open

    from alarm.pipeline.encoders import resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(llm_path)
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.endswith("embed_tokens.weight"):
                    return torch.nn.Embedding.from_pretrained(handle.get_tensor(key).to(dtype), freeze=True)
    raise FileNotFoundError(f"no embed_tokens.weight in the safetensors of {folder}")


def build_backend(engine: str, llm_path: str, llm_config: Any, device: Any, dtype: Any, eos_ids: list[int],
                  pad_id: int, sampling: dict[str, Any], seed: int, max_new_tokens: int) -> Any:
    """The backend ``engine`` names (``transformers`` or ``vllm``), loaded on ``device``.

    Args:
        engine: ``transformers`` or ``vllm``.
        llm_path: The frozen LLM's folder or id.
        llm_config: Its ``AutoConfig`` (vLLM's context length is capped by its positions).
        device: Where the model (or vLLM) and the embedding table run.
        dtype: Weights and embeddings dtype.
        eos_ids: End-of-turn token ids: generation stops there.
        pad_id: Padding id of batched transformers generation.
        sampling: ``{"do_sample": False}`` or ``do_sample``, ``temperature``, ``top_p``, ``top_k``.
        seed: Sampling seed.
        max_new_tokens: Cap on generated tokens (vLLM reserves room for them).

    Raises:
        ConfigError: engine vllm where vllm is not installed.
    """
    if engine == "vllm":
        # Room for the prompt (training's own sequence cap held audio, prompt and target) and the cap.
        wanted = PROMPT_ROOM + max_new_tokens
        positions = getattr(llm_config, "max_position_embeddings", None) or wanted
        return VllmBackend(llm_path, device, dtype, eos_ids, sampling, seed, min(positions, wanted))
    return TransformersBackend(llm_path, device, dtype, eos_ids, pad_id, sampling, seed)
