"""Export a trained front end as a self-contained folder.

The folder holds everything needed to put audio into the LLM without this run's folder:

- ``frontend.safetensors``: every front-end weight (the ``init`` weights the run started from,
  overlaid with the checkpoint's trained weights);
- ``export.json``: the FrontEndConfig, each encoder's store spec (checkpoint, kept layers, feature
  extraction, store dtype), the LLM id, and the prompt layout (text around the audio span, the
  separator, the sequence cap).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alarm.trainer.run_remote import fetch_folder, is_remote

EXPORT_VERSION = 1
WEIGHTS_FILE = "frontend.safetensors"
INFO_FILE = "export.json"


def export_model(source: str | Path, out: str | Path) -> Path:
    """Write the export folder for a run folder (its latest checkpoint) or a checkpoint folder.

    Args:
        source: A run folder or one of its ``checkpoints/step_*`` folders, a path or a URL.
        out: The folder to create (replaced if it exists).

    Returns:
        ``out``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    from alarm.pipeline.configs import from_dict, to_dict
    from alarm.trainer.build import make_frontend, open_readers
    from alarm.trainer.checkpoint import META_FILE, latest_checkpoint, load_checkpoint
    from alarm.trainer.config import TrainConfig, local_llm
    from alarm.trainer.sequence import PromptLayout

    if is_remote(str(source)):  # its latest complete checkpoint, fetched (a Path would fold "s3://" to "s3:/")
        source = fetch_folder(str(source))
    source = Path(source)
    ckpt_dir = source if (source / META_FILE).is_file() else latest_checkpoint(source)
    if ckpt_dir is None:
        raise FileNotFoundError(f"{source} holds no checkpoint to export")
    ckpt = load_checkpoint(ckpt_dir)
    cfg = from_dict(TrainConfig, ckpt.meta["config"])
    readers = open_readers(cfg)
    llm_path = local_llm(cfg.llm)
    frontend = make_frontend(cfg, readers, AutoConfig.from_pretrained(llm_path).hidden_size)
    frontend.load_state_dict(ckpt.weights, strict=False)
    layout = PromptLayout.from_tokenizer(AutoTokenizer.from_pretrained(llm_path), cfg.audio_prompt_separator)
    info = {
        "version": EXPORT_VERSION,
        "frontend": to_dict(frontend.cfg),
        "encoders": {name: {"spec_id": r.spec_id, "spec": r.spec, "layers": r.layers, "dim": r.dim}
                     for name, r in readers.items()},
        "llm": cfg.llm,
        "prompt_layout": {"head": layout.head, "audio_prompt_separator": cfg.audio_prompt_separator,
                          "middle": layout.middle, "tail": layout.tail, "max_seq_len": cfg.max_seq_len,
                          "order": ["head", "audio_start", "audio", "audio_end", "middle", "prompt", "tail"]},
        "trained_from": {"checkpoint": str(ckpt_dir), "step": ckpt.meta["step"],
                         "targets_fingerprint": ckpt.meta["targets_fingerprint"]},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        state = {k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous()
                 for k, v in frontend.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_export(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the front end of an export folder (eval mode) and return it with ``export.json``."""
    from safetensors.torch import load_file

    from alarm.pipeline.configs import from_dict
    from alarm.trainer.frontend import FrontEndConfig, build_frontend

    folder = Path(folder)
    info = json.loads((folder / INFO_FILE).read_text())
    frontend = build_frontend(from_dict(FrontEndConfig, info["frontend"]))
    frontend.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return frontend.eval(), info
