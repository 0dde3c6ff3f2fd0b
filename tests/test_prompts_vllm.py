"""Stage 0 on the vLLM engine for real, on the tiny Qwen3 (runs in .venv-vllm through .ci/vllm_tests.sh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (run .ci/vllm_tests.sh)")
pytestmark = pytest.mark.vllm

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def test_prompts_run_on_vllm_keeps_nothing_from_a_random_model_and_resumes(tmp_path, tiny_qwen3_dir):
    import json

    import prompt_fixtures as pf
    from click.testing import CliRunner

    from alarm.cli import main

    manifest = pf.write_clips(tmp_path, pf.sound_rows(3))
    config = tmp_path / "cfg.yaml"
    # eager mode: torch.compile warm-up costs ~30 s on two cores and buys nothing for a tiny model
    config.write_text("engine: {dtype: float32, max_model_len: 1024, max_num_seqs: 16, extra: {enforce_eager: true}}\n"
                      "generate_max_tokens: 24\ncheck_max_tokens: 24\nthink_budget: 12\nchunk_size: 2\n")
    out = tmp_path / "out"
    args = ["prompts", "run", str(manifest), "--out", str(out), "--config", str(config), "--engine", "vllm",
            "--model", str(tiny_qwen3_dir)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "run_report.json").read_text())
    assert report["prompt"]["generated"] == 3 and report["prompt"]["errors"] == 0
    assert report["prompt"]["tokens"] > 0 and report["check"]["requested"] == 0
    assert report["results"]["rejected_clips_per_rule"] == {"no_candidates": 3}
    assert "no_answer_block 3" in (out / "report.md").read_text()
    again = CliRunner().invoke(main, args)  # everything cached: no engine is even loaded
    assert again.exit_code == 0, again.output
    assert json.loads((out / "run_report.json").read_text())["prompt"]["cached"] == 3
