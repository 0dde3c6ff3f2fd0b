"""Loading for inference: what training used, and nothing else.

- the front end (adapters + fusion + delimiters) from a run, a checkpoint or an export folder;
- the encoders, rebuilt from the feature store's group spec (checkpoint, kept layers, window,
  compute dtype) and refused when the rebuilt encoder's spec, weights fingerprint included,
  differs from the one the adapter was trained on (the checkpoint pins the store spec ids);
- the prompt layout of training (trainer.sequence), the tokenizer and the frozen LLM behind an
  engine backend (trainer.infer_engines) with the model's own generation defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.rephrase.config import load_tokenizer
from alarm.trainer.infer_engines import build_backend
from alarm.trainer.infer_records import InferConfig
from alarm.trainer.trained import TrainedFrontEnd, build_encoders, load_trained


@dataclass
class ListenerParts:
    """Everything a ``Listener`` holds, loaded once."""

    trained: TrainedFrontEnd
    encoders: dict[str, Any]
    """Name -> encoder rebuilt from its store spec."""
    tokenizer: Any
    layout: Any
    """``sequence.PromptLayout`` of training."""
    backend: Any
    """The engine (``infer_engines``): ``generate`` and ``embed``."""
    device: Any
    autocast_dtype: Any
    """bfloat16 when the front end runs under autocast (as in training), else None."""


def load_parts(cfg: InferConfig) -> ListenerParts:
    """Load the front end, rebuild and check the encoders, load the tokenizer and the LLM.

    Raises:
        SpecMismatchError: The store or the encoders are not those of the adapter's training.
        ConfigError: Missing store, bad engine or device, an LLM of another width than the front end.
        FileNotFoundError: No checkpoint or export at ``cfg.checkpoint``.
    """
    import torch
    from transformers import AutoConfig

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
    tokenizer = load_tokenizer(str(llm_path))  # read only: shared with the rephrase stage in one process
    layout = PromptLayout.from_tokenizer(tokenizer, trained.separator)
    encoders = build_encoders(trained.specs, str(device))
    llm_config = AutoConfig.from_pretrained(llm_path)
    eos_ids, pad_id, sampling = _generation_settings(cfg, llm_path, llm_config, tokenizer)
    backend = build_backend(cfg.engine, llm_path, llm_config, device, dtype, eos_ids, pad_id, sampling,
                            cfg.seed, cfg.max_new_tokens)
    if backend.hidden_size != trained.frontend.cfg.llm_dim:
        raise ConfigError(f"the LLM {llm_path} has width {backend.hidden_size}, the front end was trained "
                          f"for {trained.frontend.cfg.llm_dim}: use the LLM it was trained with")
    trained.frontend.to(device).eval()
    return ListenerParts(trained=trained, encoders=encoders, tokenizer=tokenizer, layout=layout, backend=backend,
                         device=device, autocast_dtype=torch.bfloat16 if bf16 else None)


def _generation_settings(cfg: InferConfig, llm_path: str, llm_config: Any,
                         tokenizer: Any) -> tuple[list[int], int, dict[str, Any]]:
    """End-of-turn ids, the pad id and the sampling settings, from the model's generation defaults."""
    from transformers import GenerationConfig

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
    return eos_ids, pad_id, sampling
