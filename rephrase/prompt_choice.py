"""The seeded choice of k prompts per clip (pure): the same seed and clip key always pick the same ones.

The random generator is seeded from a hash of (seed, clip key), never from Python's salted ``hash``
or from the order clips arrive in, so a rerun, a resumed run or another machine picks the same
prompts, and one clip's choice does not depend on any other clip.
"""

from __future__ import annotations

import hashlib
import random


def choice_rng(seed: int, clip_key: str) -> random.Random:
    """A generator seeded by SHA-256 of the run seed and the clip key."""
    digest = hashlib.sha256(f"{seed}\x1f{clip_key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def choose_prompts(accepted: list[str], k: int, seed: int, clip_key: str) -> list[str]:
    """Up to ``k`` distinct prompts out of ``accepted``, in the order drawn (all of them when fewer).

    Args:
        accepted: the clip's usable candidates, in candidate order (their order is part of the draw).
        k: prompts per clip.
        seed: the run seed.
        clip_key: the clip's key (its manifest id).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    unique = list(dict.fromkeys(accepted))
    return choice_rng(seed, clip_key).sample(unique, min(k, len(unique)))


def instance_id(clip_id: str, index: int, k: int) -> str:
    """The id of the ``index``-th (0-based) instance made from a clip: the clip's own id when k is 1."""
    return clip_id if k == 1 else f"{clip_id}-p{index + 1}"
