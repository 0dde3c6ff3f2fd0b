"""The encoder registry: ALARM facts, config checks, shapes, batching and windowing equivalence (tiny preset)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders import ENCODERS, Encoder, EncoderConfig, build_encoder, split_windows

# Short windows where the encoder allows them, so windowing is exercised on short (fast) clips.
FAST_WINDOW = {"whisper": None, "w2vbert": 1.0, "muq": 1.0, "sslam": 1.28}
TOL = {"whisper": 1e-5, "w2vbert": 1e-4, "muq": 1e-4, "sslam": 1e-5}


@pytest.fixture(scope="module")
def tiny() -> dict[str, Encoder]:
    return {name: build_encoder(EncoderConfig(name, preset="tiny", batch_size=3)) for name in ENCODERS}


def _waves(sr: int, seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * sr)) + 0.02).astype(np.float32) for s in seconds]


def test_registry_holds_the_alarm_facts() -> None:
    facts = {name: (i.checkpoint, i.sample_rate, i.layers, i.dim, i.frame_rate, i.window_seconds)
             for name, i in ENCODERS.items()}
    assert facts == {
        "whisper": ("openai/whisper-large-v3", 16000, (7, 15, 23, 31), 1280, 50.0, 30.0),
        "w2vbert": ("facebook/w2v-bert-2.0", 16000, (6, 10, 15, 20, 24), 1024, 50.0, 30.0),
        "muq": ("OpenMuQ/MuQ-large-msd-iter", 24000, (4, 8, 12), 1024, 25.0, 30.0),
        "sslam": ("ta012/SSLAM_AS2M_Finetuned", 16000, (4, 8, 12), 768, 50.0, 10.24),
    }
    # ~1.41 MB of float16 per audio-second for the kept layers (docs/method.md §2).
    per_second = sum(len(i.layers) * i.dim * i.frame_rate * 2 for i in ENCODERS.values())
    assert 1.40e6 < per_second < 1.42e6


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "hubert"}, "unknown encoder"),
    ({"name": "whisper", "preset": "large"}, "unknown preset"),
    ({"name": "whisper", "dtype": "int8"}, "unknown dtype"),
    ({"name": "whisper", "batch_size": 0}, "batch_size"),
    ({"name": "whisper", "layers": (3, 3)}, "distinct"),
    ({"name": "whisper", "window_seconds": 0}, "window_seconds"),
])
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EncoderConfig(**kwargs)


def test_bad_layers_and_windows_raise_on_build() -> None:
    with pytest.raises(ConfigError, match="do not exist"):
        build_encoder(EncoderConfig("sslam", preset="tiny", layers=(2, 9)))
    with pytest.raises(ConfigError, match="fixed at 30 s"):
        build_encoder(EncoderConfig("whisper", preset="tiny", window_seconds=10))
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_encoder(EncoderConfig("sslam", preset="tiny", window_seconds=1.0))


def test_alarm_preset_never_downloads(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        build_encoder(EncoderConfig("muq", checkpoint="nobody/not-a-cached-model"))


def test_split_windows() -> None:
    assert split_windows(0, 10, 10) == []
    assert split_windows(25, 10, 10) == [(0, 10), (10, 20), (20, 25)]
    assert split_windows(20, 10, 10) == [(0, 10), (10, 20)]
    # Overlapping windows (SSLAM): the last one starts where the clip still has new samples.
    assert split_windows(21, 12, 10) == [(0, 12), (10, 21)]


def test_num_frames_follow_alarm_rates(tiny: dict[str, Encoder]) -> None:
    for n in (0, 399, 16000, 160_000, 480_001, 999_999):
        assert tiny["whisper"].num_frames(n) == n // 320
        assert tiny["sslam"].num_frames(n) == (0 if n < 400 else 1 + (n - 400) // 160) // 2
        assert tiny["muq"].num_frames(n) == n // 960
        w = tiny["w2vbert"].num_frames(n)
        assert abs(w - n // 320) <= 1


@pytest.mark.parametrize("name", list(ENCODERS))
def test_batched_equals_one_at_a_time(tiny: dict[str, Encoder], name: str) -> None:
    enc = tiny[name]
    waves = _waves(enc.sample_rate, [1.3, 0.55, 2.2, 0.02])
    batched = enc.encode(waves)
    for wave, out in zip(waves, batched, strict=True):
        assert out.dtype == np.float32
        assert out.shape == (enc.num_frames(len(wave)), len(enc.layers), enc.dim)
        single = enc.encode([wave])[0]
        np.testing.assert_allclose(out, single, atol=TOL[name], rtol=TOL[name])
    assert enc.encode([np.zeros(0, np.float32)])[0].shape == (0, len(enc.layers), enc.dim)
    with pytest.raises(ValueError, match="mono"):
        enc.encode([np.zeros((2, 1600), np.float32)])
    assert np.isfinite(np.concatenate([o.ravel() for o in batched])).all()
    # Different clips give different features (the model is not degenerate).
    assert not np.allclose(batched[0][:5], batched[2][:5])


@pytest.mark.parametrize("name", list(ENCODERS))
def test_long_clip_equals_concatenated_windows(name: str) -> None:
    enc = build_encoder(EncoderConfig(name, preset="tiny", window_seconds=FAST_WINDOW[name]))
    model = enc.model
    seconds = 31.0 if name == "whisper" else 3.7
    wave = _waves(enc.sample_rate, [seconds], seed=3)[0]
    windows = split_windows(len(wave), model.window_samples, model.hop_samples)
    assert len(windows) >= 2
    whole = enc.encode([wave])[0]
    parts = np.concatenate([enc.encode([wave[a:b]])[0] for a, b in windows])
    assert whole.shape == parts.shape == (enc.num_frames(len(wave)), len(enc.layers), enc.dim)
    np.testing.assert_allclose(whole, parts, atol=TOL[name], rtol=TOL[name])


def test_spec_names_everything_that_changes_outputs(tiny: dict[str, Encoder]) -> None:
    spec = tiny["sslam"].spec()
    assert {"encoder", "checkpoint", "weights_sha256", "layers", "sample_rate", "window_samples",
            "compute_dtype", "code_version", "preprocessing"} <= set(spec)
    json.dumps(spec)  # stored beside the data
    again = build_encoder(EncoderConfig("sslam", preset="tiny", batch_size=1)).spec()
    assert again == spec  # batch size does not change outputs, so it is not in the spec
    other = build_encoder(EncoderConfig("sslam", preset="tiny", layers=(1, 2))).spec()
    assert other["layers"] == [1, 2] and other["weights_sha256"] == spec["weights_sha256"]
    fingerprints = {tiny[n].spec()["weights_sha256"] for n in ENCODERS}
    assert len(fingerprints) == 4


def test_layers_override_selects_hidden_states(tiny: dict[str, Encoder]) -> None:
    wave = _waves(16000, [0.6])
    full = tiny["whisper"].encode(wave)[0]  # layers (1, 2, 3, 4)
    picked = build_encoder(EncoderConfig("whisper", preset="tiny", layers=(4, 2))).encode(wave)[0]
    np.testing.assert_allclose(picked, full[:, [3, 1]], atol=1e-6)


def test_gpu_bench_runs_tiny_on_cpu() -> None:
    out = subprocess.run([sys.executable, "bench/gpu_extract.py", "--preset", "tiny", "--device", "cpu",
                          "--seconds", "4", "--clips", "2", "--encoders", "sslam,muq"],
                         capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result["encoders"]) == {"sslam", "muq"}
    for row in result["encoders"].values():
        assert row["audio_seconds_per_second"] > 0 and row["flops"] > 0
    assert result["all"]["audio_seconds_per_second"] > 0


def test_w2vbert_relative_key_by_rows_is_bit_identical(tiny: dict[str, Encoder]) -> None:
    """The row-blocked W2V-BERT position bias equals transformers' own, bit for bit, alone and in the model."""
    import torch
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as library

    from alarm.pipeline.encoders.w2vbert import LIBRARY_RELATIVE_KEY, relative_key_by_rows

    assert library._apply_relative_key_position_encoding is relative_key_by_rows  # built: in use
    original = LIBRARY_RELATIVE_KEY["function"]
    torch.manual_seed(0)
    # (heads, head size, batch, frames): the tiny model's heads up to a full 30 s window, the real
    # model's 16 x 64, and lengths around the 128-row blocks.
    for heads, size, batch, frames in [(2, 16, 4, 1500), (2, 16, 1, 1), (2, 16, 3, 7), (16, 64, 2, 257),
                                       (16, 64, 1, 128), (4, 32, 2, 129)]:
        module = torch.nn.Module()
        module.left_max_position_embeddings, module.right_max_position_embeddings = 64, 8
        module.distance_embedding = torch.nn.Embedding(73, size)
        module.scaling = size ** -0.5
        query, key = torch.randn(batch, heads, frames, size), torch.randn(batch, heads, frames, size)
        with torch.inference_mode():
            expected = original(module, query, key)[1]
            got = relative_key_by_rows(module, query, key)[1]
        assert torch.equal(got, expected), (heads, size, batch, frames)
    # The whole tiny model on clips of several lengths, windows of 30 s: the same bits either way.
    model = build_encoder(EncoderConfig("w2vbert", preset="tiny", batch_size=3))
    waves = _waves(16000, [30.0, 11.3, 0.7, 29.9])
    ours = model.encode(waves)
    library._apply_relative_key_position_encoding = original
    try:
        theirs = model.encode(waves)
    finally:
        library._apply_relative_key_position_encoding = relative_key_by_rows
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
