"""Whisper's log-mel over the real frames only is the padded computation, bit for bit.

``log_mel`` runs the STFT on the frames that hold audio and repeats the first silent column; these
tests compare it with ``WhisperFeatureExtractor(padding="max_length")`` on clips of many lengths
(edges of the STFT hop and frame, the narrow-matmul floor, near and at the full 30 s window), in
batches of mixed lengths, with one and two torch threads, and through the tiny encoder end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alarm.pipeline.encoders.whisper import MIN_MEL_FRAMES, log_mel

FULL = 480_000
EDGES = [1, 159, 160, 161, 200, 399, 400, 401, 1000, 1759, 1760, 16_000, 16_001, 47_999, 80_000,
         160_000, 479_000, 479_639, 479_640, 479_800, 479_999, FULL]


def _padded(extractor, windows: list[np.ndarray]) -> torch.Tensor:
    return extractor(windows, sampling_rate=extractor.sampling_rate, padding="max_length",
                     return_tensors="pt").input_features


@pytest.fixture(scope="module", params=[80, 128], ids=["mel80", "mel128"])
def extractor(request):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=request.param)


@pytest.mark.parametrize("threads", [1, 2])
def test_log_mel_equals_padded_extractor(extractor, threads: int) -> None:
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lengths = EDGES + [int(n) for n in rng.integers(1, FULL + 1, 4)]
        for n in lengths:
            for batch in ([n], [n, max(1, n // 3)], [n, n, 7], [n, 5, 3, 1]):
                windows = [(0.2 * rng.standard_normal(k)).astype(np.float32) for k in batch]
                got, want = log_mel(extractor, windows, "cpu"), _padded(extractor, windows)
                assert got.shape == want.shape == (len(batch), extractor.feature_size, FULL // 160)
                assert torch.equal(got, want), f"lengths {batch}"
    finally:
        torch.set_num_threads(before)


def test_log_mel_silence_and_loud_clips(extractor) -> None:
    # All-zero audio (the whole window at the floor) and a loud clip beside a quiet one (per-clip max).
    windows = [np.zeros(8_000, np.float32), np.full(3_000, 0.9, np.float32),
               (1e-4 * np.random.default_rng(1).standard_normal(30_000)).astype(np.float32)]
    assert torch.equal(log_mel(extractor, windows, "cpu"), _padded(extractor, windows))


def test_log_mel_computes_few_frames_for_short_clips() -> None:
    # What makes it cheap: a 1 s clip needs about MIN_MEL_FRAMES STFT frames, not 3,000.
    from transformers import WhisperFeatureExtractor

    calls: list[int] = []
    real_stft = torch.stft

    def counting_stft(x, *args, **kwargs):
        calls.append(x.shape[-1])
        return real_stft(x, *args, **kwargs)

    torch.stft = counting_stft
    try:
        log_mel(WhisperFeatureExtractor(feature_size=80), [np.ones(16_000, np.float32)], "cpu")
    finally:
        torch.stft = real_stft
    assert calls and calls[0] <= (MIN_MEL_FRAMES + 2) * 160 + 200


def test_dither_uses_the_extractor_path() -> None:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80, dither=1.0)
    torch.manual_seed(0)
    out = log_mel(fe, [np.ones(1_600, np.float32)], "cpu")
    assert out.shape == (1, 80, 3000)
    assert torch.unique(out[0, :, -5:]).numel() > 1  # the padding got noise: the padded computation ran


def test_tiny_whisper_encodes_as_with_the_padded_log_mel(tiny_whisper_dir) -> None:
    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    enc = build_encoder(EncoderConfig("whisper", preset="tiny"))
    model = enc.model
    rng = np.random.default_rng(2)
    windows = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (160_000, 16_000, 700, FULL)]
    with torch.inference_mode():
        padded = _padded(model.extractor, windows).to(model.device, model.dtype)
        want = model.module(padded, output_hidden_states=True).hidden_states
    got = model.forward(windows)
    for b, w in enumerate(windows):
        frames = model.window_frames(len(w))
        expected = torch.stack([want[i][b, :frames] for i in model.layers], dim=1).float().numpy()
        np.testing.assert_array_equal(got[b], expected)
