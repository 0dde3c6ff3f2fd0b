"""Shared fixtures: the offline tiny models, built once and cached between test runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests never touch the network: keep tiny models in the repo's own cache folder (ignored by git)
# so a second run reuses them, and forbid hub downloads outright.
os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from azure_fixtures import az_url, azurite  # noqa: E402,F401  (the Azure emulator fixtures)
from azure_fixtures import install_env as install_azure_env  # noqa: E402
from gcs_fixtures import gcs_server, gs_url  # noqa: E402,F401  (the GCS stand-in server fixtures)
from gcs_fixtures import install_env as install_gcs_env  # noqa: E402
from s3_fixtures import install_env, s3_server, s3_url  # noqa: E402,F401  (the S3 server fixtures)

install_env()  # before any test starts Ray: its workers inherit these variables
install_azure_env()
install_gcs_env()


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    from alarm.rephrase.qwen3 import build_tiny_qwen3

    return build_tiny_qwen3()


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from alarm.rephrase.qwen3 import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture(scope="session")
def tiny_whisper_dir() -> Path:
    from alarm.pipeline.encoders.tiny import build_tiny_whisper

    return build_tiny_whisper()


@pytest.fixture(scope="session")
def tiny_w2vbert_dir() -> Path:
    from alarm.pipeline.encoders.tiny import build_tiny_w2vbert

    return build_tiny_w2vbert()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3_dir: Path) -> dict:
    """4 clips -> feature job (whisper + muq, local Ray) -> 4 training steps of an ALARM-CA front end.

    Shared by the inference and evaluation tests (read-only for them): built once per session.
    """
    import ray
    import torch
    from infer_fixtures import build_trained_run

    torch.set_num_threads(1)  # the job's encoder actors run one thread each: same kernels in the tests
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return build_trained_run(tmp_path_factory.mktemp("trained-run"), tiny_qwen3_dir)
    finally:
        if started:
            ray.shutdown()
