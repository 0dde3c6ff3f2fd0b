"""bench/gpu_all.sh end to end on a CPU at tiny sizes: every section writes its JSON line with its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SECTION_KEYS = {
    "setup": {"python", "torch", "device", "wheels_carried", "missing"},
    "gpu_extract": {"peak_tflops", "peak_measured", "encoders", "all", "skipped"},
    "gpu_stage": {"driver", "batch_size", "encoders", "all", "skipped"},
    "train_step": {"encoders", "step_s_cached", "step_s_encoder", "encoder_over_cached", "peak_mb_cached",
                   "peak_mb_encoder", "peak_memory_kind"},
    "loader_vs_step": {"loader_clips_per_s_cold", "step_clips_per_s_cached", "loader_cold_over_step"},
}
ENCODERS = ["whisper", "w2vbert", "muq", "sslam"]


@pytest.mark.slow
def test_gpu_all_runs_tiny_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    subprocess.run(["bash", str(REPO / "bench" / "gpu_all.sh"), "--device", "cpu", "--tiny"], env=env,
                   capture_output=True, text=True, timeout=900, check=True)
    rows = [json.loads(line) for line in (tmp_path / "gpu_all.jsonl").read_text().splitlines()]
    by_section = {row["section"]: row for row in rows}
    assert [row["section"] for row in rows] == list(SECTION_KEYS)
    for section, keys in SECTION_KEYS.items():
        row = by_section[section]
        assert "skipped" not in row or isinstance(row["skipped"], list), (section, row.get("skipped"))
        assert keys <= set(row), (section, keys - set(row))
    extract = by_section["gpu_extract"]
    assert list(extract["encoders"]) == ENCODERS and extract["peak_tflops"] > 0
    for row in [*extract["encoders"].values(), extract["all"]]:
        assert row["audio_seconds_per_second"] > 0 and 0 < row["fraction_of_peak"]
    assert {r["best_batch_size"] for r in extract["encoders"].values()} <= {1, 2}
    stage = by_section["gpu_stage"]
    assert list(stage["encoders"]) == ENCODERS and "no Ray" in stage["driver"]
    assert all(r["stage_over_naive"] > 0 and r["parts_written"] == r["units"] for r in stage["encoders"].values())
    step = by_section["train_step"]
    assert step["encoders"] == ENCODERS and step["step_s_cached"] > 0 and step["peak_mb_encoder"] > 0
    assert by_section["loader_vs_step"]["loader_cold_over_step"] > 0
    assert "== done" in (tmp_path / "gpu_all.log").read_text()
