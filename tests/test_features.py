"""Our torch front ends against independent references (transformers' numpy audio utilities and extractors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alarm.pipeline.encoders import features


def _tone(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A chirp plus noise and a DC offset (so DC removal and pre-emphasis matter)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(t.shape) + 0.1
    return wave.astype(np.float32)


def _numpy_kaldi_fbank(wave: np.ndarray, num_bins: int, window: str) -> np.ndarray:
    """Kaldi fbank through transformers' numpy ``spectrogram`` (how SeamlessM4T mimics Kaldi)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=num_bins, min_frequency=20,
                              max_frequency=8000, sampling_rate=16000, norm=None, mel_scale="kaldi",
                              triangularize_in_mel_space=True)
    win = window_function(400, "hann" if window == "hanning" else "povey", periodic=False)
    return spectrogram(wave.astype(np.float64), win, frame_length=400, hop_length=160, fft_length=512, power=2.0,
                       center=False, preemphasis=0.97, mel_filters=filters, log_mel="log",
                       mel_floor=1.192092955078125e-07, remove_dc_offset=True).T


@pytest.mark.filterwarnings("ignore:At least one mel filter")
@pytest.mark.parametrize("window,bins", [("hanning", 128), ("povey", 80)])
def test_kaldi_fbank_matches_numpy_reference(window: str, bins: int) -> None:
    wave = _tone(1.37)
    ours = features.kaldi_fbank(torch.from_numpy(wave)[None], num_mel_bins=bins, window=window)[0].numpy()
    ref = _numpy_kaldi_fbank(wave, bins, window)
    assert ours.shape == ref.shape == (features.kaldi_num_frames(len(wave)), bins)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)


def test_kaldi_fbank_properties() -> None:
    wave = torch.from_numpy(_tone(0.5))[None]
    # 8000 samples -> 1 + (8000 - 400) // 160 frames; shorter than one frame -> none.
    assert features.kaldi_fbank(wave).shape == (1, 48, 128)
    assert features.kaldi_fbank(wave[:, :399]).shape == (1, 0, 128)
    # A constant offset is removed per frame, so it does not change the features.
    np.testing.assert_allclose(features.kaldi_fbank(wave + 0.5), features.kaldi_fbank(wave), atol=1e-3)
    # Silence hits the log floor exactly.
    silent = features.kaldi_fbank(torch.zeros(1, 1600))
    assert torch.allclose(silent, torch.tensor(np.log(np.float32(1.1920929e-07))))
    banks = features.kaldi_mel_banks(128, 512, 16000)
    assert banks.shape == (128, 257) and banks[:, -1].abs().sum() == 0 and banks.max() <= 1.0


def test_seamless_fbank_matches_transformers_extractor() -> None:
    from transformers import SeamlessM4TFeatureExtractor

    extractor = SeamlessM4TFeatureExtractor()
    waves = [_tone(0.93, seed=1), _tone(0.41, seed=2)]
    ref = extractor(waves, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="np")
    ours, mask = features.seamless_fbank([torch.from_numpy(w) for w in waves])
    assert ours.shape == ref.input_features.shape
    np.testing.assert_array_equal(mask.numpy(), ref.attention_mask)
    valid = ref.attention_mask.astype(bool)
    np.testing.assert_allclose(ours.numpy()[valid], ref.input_features[valid], atol=5e-3)


def test_mel_db_matches_numpy_reference() -> None:
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    wave = _tone(0.8, sr=24000)
    fb = features.htk_mel_banks(128, 2048, 24000)
    ref_fb = mel_filter_bank(num_frequency_bins=1025, num_mel_filters=128, min_frequency=0, max_frequency=12000,
                             sampling_rate=24000, norm=None, mel_scale="htk")
    np.testing.assert_allclose(fb.numpy(), ref_fb, atol=1e-6)
    ours = features.mel_db(torch.from_numpy(wave)[None], torch.hann_window(2048), fb, 240)[0].numpy()
    ref = spectrogram(wave.astype(np.float64), window_function(2048, "hann"), frame_length=2048, hop_length=240,
                      power=2.0, center=True, pad_mode="reflect", mel_filters=ref_fb, log_mel="dB",
                      reference=1.0, min_value=1e-10)
    assert ours.shape == ref.shape == (128, 1 + len(wave) // 240)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
