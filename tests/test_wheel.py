"""The built wheel installs one import package, ``alarm``, and nothing at the top level.

The wheel is built from this checkout and installed with ``--no-deps`` into a fresh virtualenv; the
dependencies come from the test environment's site-packages through a ``.pth`` line (a path entry,
so that environment's own editable install of alarm is not activated). Everything runs in a temp
folder, so the checkout's folders cannot be imported by accident.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, cwd=out, capture_output=True)
    (found,) = out.glob("*.whl")
    return found


def test_wheel_holds_only_the_alarm_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"alarm", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for module in ("pipeline", "rephrase", "trainer"):
        assert f"alarm/{module}/__init__.py" in names
    assert "alarm/cli.py" in names and "alarm/__init__.py" in names
    assert not any(n.startswith(("alarm/tests/", "alarm/bench/")) for n in names)


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The test environment's packages (torch, click, ...) as a plain path entry, after the venv's own.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv has installed
    probe = subprocess.run([python, "-c", (
        "import importlib.util, alarm, alarm.pipeline, alarm.rephrase, alarm.trainer, alarm.cli\n"
        "print(alarm.__file__)\n"
        "print([m for m in ('pipeline', 'trainer', 'rephrase', 'cli') if importlib.util.find_spec(m)])")],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    location, top_level = probe.stdout.splitlines()
    assert location.startswith(site)  # the installed wheel, not the checkout
    assert top_level == "[]"
    help_text = subprocess.run([env_dir / "bin" / "alarm", "--help"], check=True, capture_output=True,
                               text=True, cwd=tmp_path, env=env).stdout
    for group in ("pipeline", "rephrase", "train", "infer", "eval"):
        assert group in help_text
