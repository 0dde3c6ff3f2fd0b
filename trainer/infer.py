"""Inference with a trained front end: audio + prompt -> the frozen LLM's thinking and answer.

``Listener.load(InferConfig)`` puts together what training used, and nothing else:

- the encoders, rebuilt from the feature store's group spec (checkpoint, kept layers, window,
  compute dtype) and refused when the rebuilt encoder's spec, weights fingerprint included,
  differs from the one the adapter was trained on (the checkpoint pins the store spec ids);
- the store's value rounding (float16 by default): on-the-fly features are quantised and
  dequantised exactly as the store does, so the adapter sees the values it saw in training;
- the front end (adapters + fusion + delimiters) from a run, a checkpoint or an export folder;
- the prompt layout of training (trainer.sequence) and the frozen LLM from ``from_pretrained``.

Generation uses a thinking budget with budget forcing (docs/method.md §6: budget 8192, cap 16384):
generate up to the budget; if ``</think>`` has not appeared, append ``FORCED_CLOSER`` and go on
to the cap. ``transformers`` is the engine everywhere; ``vllm`` takes the same prompt embeddings
where vLLM is installed (``enable_prompt_embeds``); both backends live in ``trainer.infer_engines``.

The ``Listener`` is thin: it composes the three parts, each in a module that reads alone:
loading (``infer_load``), encoding (``infer_encode``: clip -> features -> prompt embeddings) and
generation (``infer_generate``: budget forcing). The records are in ``infer_records``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alarm.trainer.infer_encode import ClipEncoder, PromptEmbedder
from alarm.trainer.infer_generate import BudgetForcing
from alarm.trainer.infer_load import ListenerParts, load_parts
from alarm.trainer.infer_records import InferConfig, InferRequest, InferResult, failure_reason


class Listener:
    """A trained front end, its encoders and the frozen LLM, loaded once; ask it questions."""

    def __init__(self, cfg: InferConfig, parts: ListenerParts) -> None:
        trained = parts.trained
        self.cfg, self.trained = cfg, trained
        self.clips = ClipEncoder(parts.encoders, trained.readers, trained.specs)
        self.embedder = PromptEmbedder(trained.frontend, parts.layout, parts.tokenizer, parts.backend.embed,
                                       parts.device, parts.autocast_dtype)
        self.forcing = BudgetForcing(parts.backend, parts.tokenizer, trained.llm)
        self.encoders, self.readers, self.shortest = parts.encoders, trained.readers, self.clips.shortest
        self.frontend, self.layout, self.tokenizer = trained.frontend, parts.layout, parts.tokenizer
        self.backend, self.device = parts.backend, parts.device
        self.think_close_id, self.closer_ids = self.forcing.think_close_id, self.forcing.closer_ids

    @classmethod
    def load(cls, cfg: InferConfig) -> Listener:
        """Load the front end, rebuild and check the encoders, load the tokenizer and the LLM.

        Raises:
            SpecMismatchError: The store or the encoders are not those of the adapter's training.
            ConfigError: Missing store, bad engine or device, an LLM of another width than the front end,
                a tokenizer without a single ``</think>`` token.
            FileNotFoundError: No checkpoint or export at ``cfg.checkpoint``.
        """
        return cls(cfg, load_parts(cfg))

    def close(self) -> None:
        """Release the engine's worker processes (vLLM); a no-op for transformers."""
        if hasattr(self.backend, "close"):
            self.backend.close()

    # -------------------------------------------------------------------------------- audio

    def audio_features(self, audio: str, start: float | None = None,
                       end: float | None = None) -> dict[str, np.ndarray]:
        """Encode a clip with every encoder, rounded as the store rounds (see ``ClipEncoder.audio_features``)."""
        return self.clips.audio_features(audio, start, end)

    def store_features(self, clip_key: str) -> dict[str, np.ndarray] | None:
        """The stored features of ``clip_key`` when the open store holds it for every encoder."""
        return self.clips.store_features(clip_key)

    def audio_embeddings(self, feats: dict[str, np.ndarray]) -> Any:
        """The front end's audio span for one clip: ``(n_audio, llm_dim)``, delimiters included."""
        return self.embedder.audio_embeddings(feats)

    def prompt_embeds(self, request: InferRequest, feats: dict[str, np.ndarray] | None = None) -> Any:
        """``(L, D)`` input embeddings of a request: head, audio span, prompt, thinking opener.

        ``feats`` are the clip's features when already computed (else stored or encoded here).
        """
        if feats is None and request.clip_key:
            feats = self.clips.store_features(request.clip_key)
        if feats is None:
            feats = self.clips.audio_features(request.audio, request.start, request.end)
        return self.embedder.prompt_embeds(request.prompt, feats)

    # -------------------------------------------------------------------------------- generation

    def generate(self, requests: list[InferRequest]) -> list[InferResult]:
        """Answer each request; a request that cannot run becomes a result with ``error`` set."""
        results: list[InferResult] = []
        for start in range(0, len(requests), self.cfg.chunk):  # bounded memory: one chunk at a time
            results.extend(self._generate_chunk(requests[start:start + self.cfg.chunk]))
        return results

    def _generate_chunk(self, requests: list[InferRequest]) -> list[InferResult]:
        feats, errors = self.clips.chunk_features(requests)
        prefixes: dict[int, Any] = {}
        for i, f in feats.items():
            try:
                prefixes[i] = self.prompt_embeds(requests[i], f)
            except Exception as err:
                errors[i] = failure_reason(err)
        del feats
        return self.forcing.answer(prefixes, errors, len(requests), self.cfg)


def infer_files(cfg: InferConfig, audio: list[str], prompt: str) -> list[InferResult]:
    """Load a ``Listener`` and ask ``prompt`` about each audio file (what ``alarm infer`` runs)."""
    listener = Listener.load(cfg)
    try:
        return listener.generate([InferRequest(audio=a, prompt=prompt) for a in audio])
    finally:
        listener.close()
