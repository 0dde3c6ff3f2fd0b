"""Inference with a trained front end: audio + prompt -> the frozen LLM's thinking and answer.

``Listener.load(InferConfig)`` puts together what training used, and nothing else:

- the encoders, rebuilt from the feature store's group spec (checkpoint, kept layers, window,
  compute dtype) and refused when the rebuilt encoder's spec, weights fingerprint included,
  differs from the one the adapter was trained on (the checkpoint pins the store spec ids);
- the store's value rounding (float16 by default): on-the-fly features are quantised and
  dequantised exactly as the store does, so the adapter sees the values it saw in training;
- the front end (adapters + fusion + delimiters) from a run, a checkpoint or an export folder;
- the prompt layout of training (trainer.sequence) and the frozen LLM from ``from_pretrained``.

Generation uses a thinking budget with budget forcing (ALARM.md §6: budget 8192, cap 16384):
generate up to the budget; if ``</think>`` has not appeared, append ``FORCED_CLOSER`` and go on
to the cap. ``transformers`` is the engine everywhere; ``vllm`` takes the same prompt embeddings
where vLLM is installed (``enable_prompt_embeds``); both backends live in ``trainer.infer_engines``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError
from alarm.trainer.infer_engines import Generation, build_backend
from alarm.trainer.trained import TrainedFrontEnd, build_encoders, load_trained

log = logging.getLogger(__name__)

ENGINES = ("transformers", "vllm")
DEVICES = ("auto", "cpu", "cuda")
THINK_CLOSE = "</think>"
# Appended when the thinking reaches its budget; the model continues straight into its answer.
# rephrase.prompts.BUDGET_FORCING_CLOSER is the same device with a sentence about editing.
FORCED_CLOSER = f"\n\nI have thought about this enough; now I will give my answer.\n{THINK_CLOSE}\n\n"


@dataclass
class InferConfig:
    """How to load a trained front end and generate with it."""

    checkpoint: str
    """A training run folder (its latest checkpoint), a ``checkpoints/step_*`` folder or an export folder."""
    store: str | None = None
    """Feature store the adapter was trained on: gives the exact encoder specs (required for a run
    or checkpoint unless the store recorded in its config still exists; optional for an export)."""
    llm: str | None = None
    """Override the LLM path recorded in the checkpoint (same model, another location)."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    engine: str = "transformers"
    """transformers, or vllm (prompt embeddings; only where vllm is importable)."""
    think_budget: int = 8192
    """Generated tokens allowed before ``</think>``; beyond it budget forcing closes the thinking."""
    max_new_tokens: int = 16384
    """Cap on all generated tokens (thinking, forced closer and answer)."""
    temperature: float = 0.0
    """0 = greedy; otherwise sampling with the model's top-p/top-k from its generation config."""
    seed: int = 0
    """Seed of the sampling generator (outputs then also depend on the batch composition)."""
    batch_size: int = 0
    """Requests encoded and generated together (bounds memory); 0: 8 with transformers, 256 with vllm
    (which schedules its own batches inside a chunk)."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint: give a run folder, a checkpoint folder or an export folder")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        for name in ("think_budget", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def chunk(self) -> int:
        """Requests handled together: ``batch_size``, or the engine's default when it is 0."""
        return self.batch_size or (256 if self.engine == "vllm" else 8)


@dataclass
class InferRequest:
    """One question about one clip."""

    audio: str
    """Audio file path, or ``/abs/shard.tar#member``."""
    prompt: str
    start: float | None = None
    end: float | None = None
    clip_key: str | None = None
    """When set and the open store holds it for every encoder, features are read from the store."""


@dataclass
class InferResult:
    """What the LLM said; ``error`` is set (and the texts empty) when the request could not run."""

    thinking: str
    answer: str
    text: str
    """The whole decoded generation (thinking, forced closer if any, answer)."""
    thinking_tokens: int
    """Generated tokens before ``</think>`` (all of them when it never came)."""
    answer_tokens: int
    """Generated tokens after ``</think>`` (end-of-turn token excluded)."""
    forced: bool
    """Budget forcing closed the thinking."""
    error: str | None = None

    @classmethod
    def failed(cls, reason: str) -> InferResult:
        """The result row of a request that could not run."""
        return cls("", "", "", 0, 0, False, reason)

    def empty_reason(self) -> str | None:
        """Why ``answer`` is empty, in words a user can act on; None when there is an answer.

        An answer is what follows ``</think>``: a reply that never closes its thinking has none, and
        one that ends its turn right after ``</think>`` has an empty one.
        """
        if self.error:
            return f"no answer: {self.error}"
        if self.answer:
            return None
        size = f"{self.thinking_tokens + self.answer_tokens} tokens, {len(self.text)} characters of raw output"
        if THINK_CLOSE not in self.text:
            return (f"empty: the reply never closed its thinking with {THINK_CLOSE} ({size}, all of it "
                    f"thinking); raise --max-new-tokens or lower --think-budget so budget forcing closes it")
        if self.answer_tokens:
            return (f"empty: the {self.answer_tokens} tokens after {THINK_CLOSE} are only whitespace or "
                    f"special tokens ({size})")
        closed = "budget forcing closed the thinking, then " if self.forced else ""
        return f"empty: {closed}the LLM ended its turn right after {THINK_CLOSE} ({size})"


def split_thinking(text: str) -> tuple[str, str]:
    """Split a generation (which starts inside the thinking block) at its first ``</think>``.

    Returns:
        ``(thinking, answer)``; without ``</think>`` everything is thinking and the answer is empty.
    """
    thinking, close, answer = text.partition(THINK_CLOSE)
    thinking = thinking.removeprefix("<think>").strip()
    return thinking, answer.strip() if close else ""


def next_step(gen: Generation, think_close_id: int, budget: int, cap: int, closer_ids: list[int]) -> list[int] | None:
    """What follows the budgeted first call: None (finished) or the ids to append before continuing.

    ``[]`` means continue as is (the thinking closed within the budget and the cap is not reached);
    ``closer_ids`` means budget forcing (the budget ran out inside the thinking).
    """
    if gen.stopped or len(gen.ids) >= cap:
        return None
    if think_close_id in gen.ids:
        return []
    if len(gen.ids) < budget:  # stopped short without an end token (an engine abort): nothing to force
        return None
    if len(gen.ids) + len(closer_ids) >= cap:
        return None
    return list(closer_ids)


# ------------------------------------------------------------------------------------------ listener


class Listener:
    """A trained front end, its encoders and the frozen LLM, loaded once; ask it questions."""

    def __init__(self, cfg: InferConfig, trained: TrainedFrontEnd, encoders: dict[str, Any],
                 readers: dict[str, Any], tokenizer: Any, layout: Any, backend: Any, device: Any,
                 autocast_dtype: Any) -> None:
        import torch

        from alarm.pipeline.encoders import shortest_clip_seconds

        self.cfg, self.trained, self.encoders, self.readers = cfg, trained, encoders, readers
        # Shorter clips give some encoder no frame; the feature job rejects them with the same bound.
        self.shortest = shortest_clip_seconds((e.min_samples(), e.sample_rate) for e in encoders.values())
        self.frontend = trained.frontend
        self.tokenizer, self.layout, self.backend = tokenizer, layout, backend
        self.device, self.autocast_dtype = device, autocast_dtype
        self.head_ids = torch.tensor(layout.head_ids, dtype=torch.long)
        self.think_close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        self.closer_ids = tokenizer.encode(FORCED_CLOSER, add_special_tokens=False)
        if self.think_close_id not in self.closer_ids:
            raise ConfigError(f"the tokenizer of {trained.llm} has no single {THINK_CLOSE} token; this LLM is not "
                              "a thinking model")

    @classmethod
    def load(cls, cfg: InferConfig) -> Listener:
        """Load the front end, rebuild and check the encoders, load the tokenizer and the LLM.

        Raises:
            SpecMismatchError: The store or the encoders are not those of the adapter's training.
            ConfigError: Missing store, bad engine or device, an LLM of another width than the front end.
            FileNotFoundError: No checkpoint or export at ``cfg.checkpoint``.
        """
        import torch
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from alarm.trainer.sequence import PromptLayout

        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda: no GPU is visible here; use device auto or cpu")
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        trained = load_trained(cfg.checkpoint, cfg.store, cfg.llm)
        llm_path = trained.llm
        # As in training: bf16 on a GPU unless the run was fp32, float32 on a CPU.
        bf16 = trained.precision == "bf16" or (trained.precision == "auto" and device.type == "cuda")
        dtype = torch.bfloat16 if bf16 else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(llm_path)
        layout = PromptLayout.from_tokenizer(tokenizer, trained.separator)
        encoders = build_encoders(trained.specs, str(device))
        llm_config = AutoConfig.from_pretrained(llm_path)
        defaults = GenerationConfig.from_model_config(llm_config)
        try:
            defaults = GenerationConfig.from_pretrained(llm_path)
        except OSError:  # no generation_config.json: the model config's ids will do
            pass
        eos = defaults.eos_token_id
        eos_ids = sorted(set((eos if isinstance(eos, list) else [eos] if eos is not None else [])
                             + [tokenizer.eos_token_id]) - {None})
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if cfg.temperature > 0:  # the model's own top-p/top-k (Qwen3 thinking: 0.95, 20)
            sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": defaults.top_p,
                        "top_k": defaults.top_k}
        backend = build_backend(cfg.engine, llm_path, llm_config, device, dtype, eos_ids, pad_id, sampling,
                                cfg.seed, cfg.max_new_tokens)
        if backend.hidden_size != trained.frontend.cfg.llm_dim:
            raise ConfigError(f"the LLM {llm_path} has width {backend.hidden_size}, the front end was trained "
                              f"for {trained.frontend.cfg.llm_dim}: use the LLM it was trained with")
        trained.frontend.to(device).eval()
        return cls(cfg, trained, encoders, trained.readers, tokenizer, layout, backend, device,
                   torch.bfloat16 if bf16 else None)

    def close(self) -> None:
        """Release the engine's worker processes (vLLM); a no-op for transformers."""
        if hasattr(self.backend, "close"):
            self.backend.close()

    # -------------------------------------------------------------------------------- audio

    def audio_features(self, audio: str, start: float | None = None,
                       end: float | None = None) -> dict[str, np.ndarray]:
        """Encode a clip with every encoder, rounded as the store rounds: name -> (frames, layers, dim).

        Raises:
            DecodeError: The clip is missing, undecodable, empty, too long (ALARM drops >= 60 s) or too
                short to give an encoder a frame.
        """
        return self._encode([self._waves(audio, start, end)])[0]

    def _waves(self, audio: str, start: float | None, end: float | None) -> dict[str, np.ndarray]:
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

    def _encode(self, clips: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Encode several clips' waves (windows batched by each encoder), then round as the store does."""
        from alarm.pipeline.store_values import dequantize, quantize

        feats: list[dict[str, np.ndarray]] = [{} for _ in clips]
        for name, encoder in self.encoders.items():
            dtype = self.trained.specs[name]["store"]["dtype"]
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
                    waves[i] = self._waves(request.audio, request.start, request.end)
            except Exception as err:  # one bad clip never sinks the others; DecodeError texts are reasons
                errors[i] = _reason(err)
        try:
            feats.update(zip(waves, self._encode(list(waves.values())), strict=True))
        except Exception:  # find the clip that breaks the batch
            for i, one in waves.items():
                try:
                    feats[i] = self._encode([one])[0]
                except Exception as err:
                    errors[i] = _reason(err)
        return feats, errors

    def store_features(self, clip_key: str) -> dict[str, np.ndarray] | None:
        """The stored features of ``clip_key`` when the open store holds it for every encoder.

        A clip an older store kept with 0 frames in some encoder counts as absent: the clip is then
        decoded and refused with its too-short reason, as the feature job now refuses it.
        """
        if not self.readers or not all(clip_key in r and r.num_frames(clip_key) > 0 for r in self.readers.values()):
            return None
        return {name: r.read(clip_key) for name, r in self.readers.items()}

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

    def prompt_embeds(self, request: InferRequest, feats: dict[str, np.ndarray] | None = None) -> Any:
        """``(L, D)`` input embeddings of a request: head, audio span, prompt, thinking opener.

        ``feats`` are the clip's features when already computed (else stored or encoded here).
        """
        import torch

        from alarm.trainer.sequence import prompt_embeds

        if feats is None and request.clip_key:
            feats = self.store_features(request.clip_key)
        if feats is None:
            feats = self.audio_features(request.audio, request.start, request.end)
        audio = self.audio_embeddings(feats)
        prompt_ids = torch.tensor(self.layout.prompt_ids(self.tokenizer, request.prompt), dtype=torch.long)
        with torch.inference_mode():
            return prompt_embeds(audio, len(audio), self.head_ids, prompt_ids, self.backend.embed)[0]

    # -------------------------------------------------------------------------------- generation

    def generate(self, requests: list[InferRequest]) -> list[InferResult]:
        """Answer each request; a request that cannot run becomes a result with ``error`` set."""
        results: list[InferResult] = []
        for start in range(0, len(requests), self.cfg.chunk):  # bounded memory: one chunk at a time
            results.extend(self._generate_chunk(requests[start:start + self.cfg.chunk]))
        return results

    def _generate_chunk(self, requests: list[InferRequest]) -> list[InferResult]:
        import torch

        feats, errors = self.chunk_features(requests)
        prefixes: dict[int, Any] = {}
        for i, f in feats.items():
            try:
                prefixes[i] = self.prompt_embeds(requests[i], f)
            except Exception as err:
                errors[i] = _reason(err)
        del feats
        cap = self.cfg.max_new_tokens
        budget = min(self.cfg.think_budget, cap)
        gens = self._run(prefixes, dict.fromkeys(prefixes, budget), errors)
        follow, limits, forced = {}, {}, {}
        for i, gen in gens.items():
            extra = next_step(gen, self.think_close_id, budget, cap, self.closer_ids)
            if extra is None:
                continue
            forced[i] = bool(extra)
            gen.ids += extra
            with torch.inference_mode():
                tail = self.backend.embed(torch.tensor(gen.ids, device=prefixes[i].device))
            follow[i] = torch.cat([prefixes[i], tail.to(prefixes[i].dtype)])
            limits[i] = cap - len(gen.ids)
        for i, more in self._run(follow, limits, errors).items():
            gens[i].ids += more.ids
            gens[i].stopped = more.stopped
        return [InferResult.failed(errors[i]) if i in errors else self._result(gens[i], forced.get(i, False))
                for i in range(len(requests))]

    def _run(self, prefixes: dict[int, Any], limits: dict[int, int], errors: dict[int, str]) -> dict[int, Generation]:
        """Generate for every prefix in batches of similar length; failures go to ``errors``."""
        order = sorted(prefixes, key=lambda i: len(prefixes[i]))
        out: dict[int, Generation] = {}
        for k in range(0, len(order), self.cfg.chunk):
            out.update(self._run_safely(order[k:k + self.cfg.chunk], prefixes, limits, errors))
        return out

    def _run_safely(self, batch: list[int], prefixes: dict[int, Any], limits: dict[int, int],
                    errors: dict[int, str]) -> dict[int, Generation]:
        try:
            gens = self.backend.generate([prefixes[i] for i in batch], [limits[i] for i in batch])
            return dict(zip(batch, gens, strict=True))
        except Exception as err:  # narrow down to the request that fails
            if len(batch) == 1:
                log.warning("request %d failed: %s", batch[0], err)
                errors[batch[0]] = _reason(err)
                return {}
            out = {}
            for i in batch:
                out.update(self._run_safely([i], prefixes, limits, errors))
            return out

    def _result(self, gen: Generation, forced: bool) -> InferResult:
        text = self.tokenizer.decode(gen.ids, skip_special_tokens=True)
        thinking, answer = split_thinking(text)
        if self.think_close_id in gen.ids:
            k = gen.ids.index(self.think_close_id)
            n_thinking, n_answer = k, len(gen.ids) - k - 1
        else:
            n_thinking, n_answer = len(gen.ids), 0
        return InferResult(thinking, answer, text, n_thinking, n_answer, forced)


def _reason(err: Exception) -> str:
    from alarm.pipeline.decode import DecodeError

    return str(err) if isinstance(err, DecodeError) else f"{type(err).__name__}: {err}"


def infer_files(cfg: InferConfig, audio: list[str], prompt: str) -> list[InferResult]:
    """Load a ``Listener`` and ask ``prompt`` about each audio file (what ``alarm infer`` runs)."""
    listener = Listener.load(cfg)
    try:
        return listener.generate([InferRequest(audio=a, prompt=prompt) for a in audio])
    finally:
        listener.close()
