"""Stored values: float32 features to the store's dtype (float16, bfloat16, float32, int8) and back."""

from __future__ import annotations

import numpy as np


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even) as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode float32 features ``(frames, layers, dim)`` for storage; int8 also returns scales."""
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32), None
    if dtype == "float16":
        return x.astype(np.float16), None
    if dtype == "bfloat16":
        return _to_bf16_bits(x), None
    peak = np.abs(x).max(axis=2)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scales[..., None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize(values: np.ndarray, scales: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of :func:`quantize`, always float32."""
    if dtype == "bfloat16":
        return _from_bf16_bits(values)
    if dtype == "int8":
        return values.astype(np.float32) * scales[..., None]
    return values.astype(np.float32)


def zarr_dtype(dtype: str) -> str:
    # numpy has no bfloat16: its bit patterns are kept as uint16 and the spec says how to read them.
    return "uint16" if dtype == "bfloat16" else dtype
