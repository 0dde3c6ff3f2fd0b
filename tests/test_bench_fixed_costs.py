"""bench/fixed_costs.py end to end with one tiny encoder: one JSON line whose figures hold together (17 s quiet)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fixed_costs_bench_runs_tiny_on_cpu() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "fixed_costs.py"), "--encoders", "sslam",
                          "--repeats", "1", "--mix-clips", "2"], capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("ray_import_s", "ray_init_s", "ray_init_second_s", "ray_shutdown_s"):
        assert len(result[key]["runs"]) == 1 and result[key]["median"] > 0, key
    # The job's shared pool for one encoder on 2 CPUs: two actors, each timed, each with its phases.
    ready = result["actor_ready_s"]["shared"]
    assert len(ready["actors_s"][0]) == 2 and ready["median"] == max(ready["actors_s"][0])
    assert len(ready["process_start_s"][0]) == 2
    phases = result["actor_phases"]["shared"]["runs"][0]
    assert len(phases) == 2
    for actor in phases:
        assert actor["imports_s"] > 0 and actor["build_and_rest_s"] > 0 and actor["first_call_s"] >= 0
        # The actor's own stamps (its clock is the driver's) fall in order: process, __init__, ready.
        assert actor["process_start_s"] < actor["to_init_s"] < actor["ready_s"]
    assert result["actor_phases"]["shared"]["imports_median"]["torch"][1] > 0  # [wall, CPU] seconds
    # One clip is encoded; the rerun over the finished store starts no Ray and encodes nothing.
    job = result["empty_job_s"]
    assert job["one_clip"]["ray_started"] == [True] and job["one_clip"]["encoded"] == [{"sslam": 1}]
    assert job["cached_rerun"]["ray_started"] == [False] and job["cached_rerun"]["encoded"] == [{"sslam": 0}]
    assert job["cached_rerun"]["cpu_by_role"][0]["actor"] == 0
    mix = result["mixdown_s"]
    assert mix["bit_identical"] is True and mix["clips"] == 4 and mix["mix_down"]["median"] > 0
    assert len(result["load_avg_start"]) == 3 and len(result["load_avg_end"]) == 3
