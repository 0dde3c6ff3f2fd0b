"""The textual description of a clip, built from its original labels only (docs/method.md §5).

Pass 1 of self-rephrasing shows the LLM this text in place of the audio, so it must say only
what the labels say. Shapes:

* speech: ``[00:00-00:03] Turn left here. (duration: 3s, gender: female)``
* sound or music: ``[00:00-00:10] |dog barking| (duration: 10s)``; labels as ``|dog, bark|``
* several speakers: one bracketed line per turn with that turn's attributes, then the clip's
  own attributes on a last line: ``(duration: 7s, language: en)``.

Times are rounded to whole seconds (a clip shorter than half a second still shows 1 s, so a
description never claims a zero-length clip).
"""

from __future__ import annotations

import json
import math
from typing import Any

# Metadata keys that shape the content instead of becoming `key: value` attributes.
ROLE_KEYS = ("transcript", "caption", "labels", "segments")
# Keys never shown: they describe the file, not what is heard.
HIDDEN_KEYS = ("duration",)


def _seconds(value: float) -> int:
    """Round half up to whole seconds."""
    return int(math.floor(value + 0.5))


def timestamp(seconds: float) -> str:
    """``MM:SS`` (minutes keep counting past 59; clips are under a minute by default anyway)."""
    total = max(0, _seconds(seconds))
    return f"{total // 60:02d}:{total % 60:02d}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value).strip()


def _attributes(items: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
    return [
        f"{key}: {_value(value)}"
        for key, value in items.items()
        if key not in skip and value is not None and _value(value) != ""
    ]


def _sound_content(metadata: dict[str, Any]) -> str:
    parts = []
    caption = (metadata.get("caption") or "").strip()
    if caption:
        parts.append(f"|{caption}|")
    labels = [label.strip() for label in metadata.get("labels") or [] if label.strip()]
    if labels:
        parts.append(f"|{', '.join(labels)}|")
    return " ".join(parts)


def build_description(metadata: dict[str, Any], duration: float) -> str:
    """Describe a clip from its labels.

    Args:
        metadata: the manifest row's ``metadata`` (role keys: transcript, caption, labels,
            segments; every other key becomes ``key: value``).
        duration: the clip's length in seconds (after any start/end cut).

    Returns:
        The description text, one line per speaker turn for multi-speaker clips.
    """
    if duration < 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be a non-negative number of seconds, got {duration}")
    shown = max(1, _seconds(duration)) if duration > 0 else 0
    clip_attrs = [f"duration: {shown}s"] + _attributes(metadata, ROLE_KEYS + HIDDEN_KEYS)
    sound = _sound_content(metadata)
    segments = metadata.get("segments") or []
    if segments:
        lines = []
        for seg in sorted(segments, key=lambda s: (s["start"], s["end"])):
            text = (seg.get("text") or "").strip()
            attrs = _attributes(seg, ("start", "end", "text"))
            line = f"[{timestamp(seg['start'])}-{timestamp(seg['end'])}] {text}".rstrip()
            if attrs:
                line += f" ({', '.join(attrs)})"
            lines.append(line)
        tail = f"{sound} " if sound else ""
        lines.append(f"{tail}({', '.join(clip_attrs)})")
        return "\n".join(lines)
    transcript = (metadata.get("transcript") or "").strip()
    content = " ".join(part for part in (transcript, sound) if part)
    head = f"[00:00-{timestamp(shown)}]"
    body = f"{head} {content}" if content else head
    return f"{body} ({', '.join(clip_attrs)})"


def _says_something(metadata: dict[str, Any]) -> bool:
    """Whether the labels hold anything heard or known about the clip beyond its length."""
    segments = metadata.get("segments") or []
    return bool((metadata.get("transcript") or "").strip() or _sound_content(metadata)
                or _attributes(metadata, ROLE_KEYS + HIDDEN_KEYS)
                or any((seg.get("text") or "").strip() or _attributes(seg, ("start", "end", "text"))
                       for seg in segments))


def instance_description(instance: Any, duration: float) -> str:
    """An instance's description: its precomputed ``description`` if the manifest gave one.

    Raises:
        ValueError: neither a description nor any label: the LLM would answer from a bare duration and
            its target would be invented, so the row is rejected (``no_description``) instead.
    """
    given = getattr(instance, "description", None)
    if given and given.strip():
        return given
    metadata = instance.metadata or {}
    if not _says_something(metadata):
        raise ValueError("no description and no label (transcript, caption, labels, segments or other "
                         "metadata) to describe the clip from")
    return build_description(metadata, duration)
