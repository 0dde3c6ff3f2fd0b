"""A store on a full disk: refused before starting, one line when it fills up, and a clean resume.

The disk is a real 3 MB tmpfs (we mount it; the test skips where mounting is not permitted and
always unmounts). The job is the real one: local Ray, the tiny encoders, a Zarr store.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from store_fixtures import tone, write_manifest_rows, write_wav
from store_trees import store_digest

from alarm.cli import main
from alarm.pipeline.job import PipelineConfig, run_pipeline
from alarm.pipeline.store_layout import DONE

ENCODERS = ["whisper", "w2vbert"]
# float32 and one 15 s clip per part: about 0.86 MB a part, 5.2 MB in all (the tiny models' sizes).
STORAGE = {"dtype": "float32", "part_seconds": 20.0}


def tree_digest(root: Path) -> dict[str, str]:
    """Bytes of every object a job writes (parts by part id, not attempt), except its summary and report
    (timings) and the lease."""
    return store_digest(root, skip={"summary.json", "report.json", "report.md", ".lease"})


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # busy: detach it now, free it later


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long-clips")
    rows = [{"id": f"clip{i}", "audio": str(write_wav(folder / f"clip{i}.wav", tone(15.0, 16000, seed=i), 16000)),
             "dataset": "toy"} for i in range(6)]
    return write_manifest_rows(rows, folder / "manifest.jsonl")


def _cli_run(manifest: Path, store: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``alarm pipeline run`` (in this process, so it uses the test's Ray); returns its output lines."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"storage": STORAGE}))
    result = CliRunner().invoke(main, ["pipeline", "run", str(manifest), "--store", str(store), "--preset", "tiny",
                                       "--encoders", ",".join(ENCODERS), "--config", str(config), "--no-progress",
                                       *extra])
    assert result.exit_code != 0, result.output
    return result.output.strip().splitlines()


def test_full_disk_is_refused_then_fails_in_one_line_then_resumes(ray_session, manifest, small_disk, tmp_path):
    reference = tmp_path / "reference"
    cfg = {"manifest": str(manifest), "encoders": ENCODERS, "preset": "tiny", "storage": STORAGE, "progress": False}
    summary = run_pipeline(PipelineConfig(store=str(reference), **cfg))
    assert summary.stored == {e: 6 for e in ENCODERS}
    store = small_disk / "store"

    # Before starting: the estimate (about 5 MB) does not fit in 3 MB.
    lines = _cli_run(manifest, store, tmp_path)
    assert len(lines) == 1, lines
    needs = re.search(r"store (\S+): ([\d.]+) MiB free on its disk, the job needs about ([\d.]+) MiB", lines[0])
    assert needs and needs[1] == str(store) and float(needs[2]) < 3 < float(needs[3]), lines
    assert not any((store / "features").rglob(DONE)), "a refused job wrote parts"

    # Forced: the disk fills up part-way; one line naming the store, what is free and what was needed.
    lines = _cli_run(manifest, store, tmp_path, "--force")
    assert len(lines) == 1, lines
    assert str(store) in lines[0] and "no space left on device" in lines[0], lines
    assert f"needed about {needs[3]} MiB" in lines[0], lines
    done = list((store / "features").rglob(DONE))
    assert 0 < len(done) < 2 * 6, "expected some parts committed before the disk filled"

    # Room again: the same job resumes and the store ends byte-identical to an undisturbed one.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_pipeline(PipelineConfig(store=str(store), **cfg))
    assert resumed.stored == summary.stored and 0 < sum(resumed.encoded.values()) < 2 * 6
    assert tree_digest(store) == tree_digest(reference)
