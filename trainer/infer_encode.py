"""Encoding for inference: a clip -> the features training saw -> the prompt embeddings the LLM reads.

``ClipEncoder`` decodes and encodes audio as the feature job does, then rounds the features as the
store does (float16 by default), so the adapter sees the values it saw in training; where the open
store already holds a clip, its stored features are read instead. ``PromptEmbedder`` runs the front
end and lays out head, audio span, prompt and thinking opener as in training (trainer.sequence).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alarm.trainer.infer_records import InferRequest, failure_reason


class ClipEncoder:
    """The rebuilt encoders (and the store, when open): audio or a clip key -> name -> (frames, layers, dim)."""

    def __init__(self, encoders: dict[str, Any], readers: dict[str, Any], specs: dict[str, Any]) -> None:
        from alarm.pipeline.encoders import shortest_clip_seconds

        self.encoders, self.readers, self.specs = encoders, readers, specs
        # Shorter clips give some encoder no frame; the feature job rejects them with the same bound.
        self.shortest = shortest_clip_seconds((e.min_samples(), e.sample_rate) for e in encoders.values())

    def audio_features(self, audio: str, start: float | None = None,
                       end: float | None = None) -> dict[str, np.ndarray]:
        """Encode a clip with every encoder, rounded as the store rounds: name -> (frames, layers, dim).

        Raises:
            DecodeError: The clip is missing, undecodable, empty, too long (ALARM drops >= 60 s) or too
                short to give an encoder a frame.
        """
        return self.encode([self.waves(audio, start, end)])[0]

    def waves(self, audio: str, start: float | None, end: float | None) -> dict[str, np.ndarray]:
        """Decode a clip and resample it for each encoder, as the feature job does."""
        from alarm.pipeline.decode import DecodeConfig, DecodeError, decode_clip
        from alarm.pipeline.encoders import too_short_reason

        decode = DecodeConfig()
        clip = decode_clip(audio, start, end, decode)
        if clip.duration < self.shortest:
            raise DecodeError(too_short_reason(clip.duration, self.shortest))
        waves = {}
        for name, encoder in self.encoders.items():
            # The job resamples with soxr at DecodeConfig's default quality (the store spec does not record it).
            waves[name] = clip.at(encoder.sample_rate, decode.resample_quality)
            if encoder.num_frames(len(waves[name])) == 0:  # cannot happen at >= shortest; a clear reason if it does
                raise DecodeError(f"too short: {clip.duration:.6g} s gives no {name} frames")
        return waves

    def encode(self, clips: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Encode several clips' waves (windows batched by each encoder), then round as the store does."""
        from alarm.pipeline.store_values import dequantize, quantize

        feats: list[dict[str, np.ndarray]] = [{} for _ in clips]
        for name, encoder in self.encoders.items():
            dtype = self.specs[name]["store"]["dtype"]
            for out, values in zip(feats, encoder.encode([waves[name] for waves in clips]), strict=True):
                out[name] = dequantize(*quantize(values, dtype), dtype)
        return feats

    def chunk_features(self, requests: list[InferRequest]) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
        """Features of each request (stored ones where ``clip_key`` allows) and the reasons of those that fail.

        Clips are encoded together, so an encoder batches their windows as the feature job does.
        """
        feats: dict[int, dict[str, np.ndarray]] = {}
        errors: dict[int, str] = {}
        waves: dict[int, dict[str, np.ndarray]] = {}
        for i, request in enumerate(requests):
            try:
                stored = self.store_features(request.clip_key) if request.clip_key else None
                if stored is not None:
                    feats[i] = stored
                else:
                    waves[i] = self.waves(request.audio, request.start, request.end)
            except Exception as err:  # one bad clip never sinks the others; DecodeError texts are reasons
                errors[i] = failure_reason(err)
        try:
            feats.update(zip(waves, self.encode(list(waves.values())), strict=True))
        except Exception:  # find the clip that breaks the batch
            for i, one in waves.items():
                try:
                    feats[i] = self.encode([one])[0]
                except Exception as err:
                    errors[i] = failure_reason(err)
        return feats, errors

    def store_features(self, clip_key: str) -> dict[str, np.ndarray] | None:
        """The stored features of ``clip_key`` when the open store holds it for every encoder.

        A clip an older store kept with 0 frames in some encoder counts as absent: the clip is then
        decoded and refused with its too-short reason, as the feature job now refuses it.
        """
        if not self.readers or not all(clip_key in r and r.num_frames(clip_key) > 0 for r in self.readers.values()):
            return None
        return {name: r.read(clip_key) for name, r in self.readers.items()}


class PromptEmbedder:
    """The trained front end and the prompt layout of training: features + prompt -> ``(L, D)`` embeddings."""

    def __init__(self, frontend: Any, layout: Any, tokenizer: Any, embed: Any, device: Any,
                 autocast_dtype: Any) -> None:
        import torch

        self.frontend, self.layout, self.tokenizer, self.embed = frontend, layout, tokenizer, embed
        self.device, self.autocast_dtype = device, autocast_dtype
        self.head_ids = torch.tensor(layout.head_ids, dtype=torch.long)

    def audio_embeddings(self, feats: dict[str, np.ndarray]) -> Any:
        """The front end's audio span for one clip: ``(n_audio, llm_dim)``, delimiters included."""
        import contextlib

        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v))[None].to(self.device).float()
                   for k, v in feats.items()}
        lengths = {k: torch.tensor([v.shape[0]], device=self.device) for k, v in feats.items()}
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            audio, audio_lengths = self.frontend(tensors, lengths)
        return audio[0, : int(audio_lengths[0])]

    def prompt_embeds(self, prompt: str, feats: dict[str, np.ndarray]) -> Any:
        """``(L, D)`` input embeddings of a request: head, audio span, prompt, thinking opener."""
        import torch

        from alarm.trainer.sequence import prompt_embeds

        audio = self.audio_embeddings(feats)
        prompt_ids = torch.tensor(self.layout.prompt_ids(self.tokenizer, prompt), dtype=torch.long)
        with torch.inference_mode():
            return prompt_embeds(audio, len(audio), self.head_ids, prompt_ids, self.embed)[0]
