"""``alarm stats MANIFEST``: hours, clips and instances per dataset and domain, from file headers only.

Durations come from each file's header (``pipeline.probe.probe_duration``, no decoding), probed in a
thread pool; a cut (``start``/``end``) counts only its part of the file. Audio that cannot be opened is
counted as *unreadable*, never fatal.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.counts import COUNTS_HELP, ClipCounts, input_counts
from alarm.pipeline.formatting import format_number, human_duration
from alarm.pipeline.report import Section, histogram_figure, write_report

DOMAINS = ("speech", "sound", "music", "instruction")
# Metadata key prefixes that only music labels carry ("tempo_bpm", "chord_quality", "instruments"), and
# exact keys too short to be safe prefixes ("key" would also catch "keywords").
MUSIC_PREFIXES = ("note", "tempo", "bpm", "genre", "instrument", "chord", "melod", "timbre", "tonality")
MUSIC_KEYS = ("key", "mode", "beats", "downbeats")
# Dataset-name fragments of music corpora (MusicCaps, MTG-Jamendo, FMA, NSynth, GTZAN, MAESTRO, ...).
MUSIC_NAMES = ("music", "song", "midi", "melod", "jamendo", "fma", "nsynth", "gtzan", "maestro", "instrument")


def domain_of(instance: Any) -> str:
    """The domain of an instance, by the first rule that applies.

    1. ``kind == "instruction"`` -> ``instruction`` (a spoken instruction, whatever its labels);
    2. a non-empty ``transcript`` in the metadata, or in any of its ``segments`` -> ``speech``;
    3. a music hint -> ``music``: a metadata key starting with one of ``MUSIC_PREFIXES`` (notes,
       tempo_bpm, genre, instruments, chord_quality, timbre, ...) or equal to one of ``MUSIC_KEYS``
       (key, mode, ...), or a dataset name containing one of ``MUSIC_NAMES`` (music, song, midi, ...);
    4. otherwise ``sound``.
    """
    if instance.kind == "instruction":
        return "instruction"
    meta = instance.metadata or {}
    segments = meta.get("segments") if isinstance(meta.get("segments"), list) else []
    if str(meta.get("transcript") or "").strip() or any(
            isinstance(s, dict) and str(s.get("transcript") or "").strip() for s in segments):
        return "speech"
    keys = [str(k).lower() for k in meta]
    name = instance.dataset.lower()
    if (any(k.startswith(MUSIC_PREFIXES) or k in MUSIC_KEYS for k in keys)
            or any(m in name for m in MUSIC_NAMES)):
        return "music"
    return "sound"


@dataclass
class GroupStats:
    """Counts of one (dataset, domain) group, or of the whole manifest (``dataset == "total"``).

    Attributes:
        dataset: dataset name.
        domain: one of ``DOMAINS`` (``all`` on the totals row).
        instances: manifest rows.
        clips: distinct readable (audio, start, end) sources (the ``readable`` count of pipeline.counts).
        hours: their summed duration in hours (each distinct source once).
        unreadable: distinct sources whose audio could not be opened.
    """

    dataset: str
    domain: str
    instances: int = 0
    clips: int = 0
    hours: float = 0.0
    unreadable: int = 0


@dataclass
class ManifestStats:
    """What ``manifest_stats`` found."""

    manifest: str
    groups: list[GroupStats]
    total: GroupStats
    rejected_rows: int
    unreadable: dict[str, str] = field(default_factory=dict)  # audio -> reason (a few examples)
    durations: dict[str, list[float]] = field(default_factory=dict)  # dataset -> clip durations (s)
    counts: ClipCounts = field(default_factory=ClipCounts)
    """Manifest rows, audio files, sources and readable sources, named as every command names them."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (without the raw durations)."""
        return {"manifest": self.manifest, "groups": [asdict(g) for g in self.groups],
                "total": asdict(self.total), "rejected_rows": self.rejected_rows,
                "unreadable_examples": self.unreadable, "counts": self.counts.to_dict()}


def cut_duration(total: float, start: float | None, end: float | None) -> float:
    """Seconds a cut covers inside a file of ``total`` seconds (the whole file without a cut)."""
    lo = start or 0.0
    hi = total if end is None else min(end, total)
    return max(0.0, hi - lo)


def probe_all(audio: Iterable[str], workers: int = 8, progress: bool = True) -> dict[str, float | str]:
    """Header duration of each distinct audio location, or the reason it is unreadable (a str)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    # probe_duration reads tar members through a per-shard member table, so a shard is indexed once.
    from alarm.pipeline.probe import probe_duration

    def one(path: str) -> float | str:
        try:
            return probe_duration(path)
        except (ValueError, OSError) as err:  # AudioUnreadable and DecodeError are ValueErrors
            return str(err) or type(err).__name__

    paths = sorted(set(audio))
    # libsndfile releases the GIL while it reads headers, so threads overlap the file-system waits.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # delay: a bar only when probing takes more than a second.
        results = list(tqdm(pool.map(one, paths), total=len(paths), desc="probing", unit="file",
                            disable=not progress, delay=1.0))
    return dict(zip(paths, results, strict=True))


def manifest_stats(manifest: str | Path, workers: int = 8, progress: bool = True) -> ManifestStats:
    """Hours, clips and instances per (dataset, domain) of a manifest, plus a totals row.

    A clip is a distinct (audio, start, end) source; the same source in two groups counts in both,
    and once in the totals. Unreadable audio counts its instances, not its hours.

    Raises:
        ManifestError: the manifest is missing, empty or has no valid row.
    """
    from alarm.pipeline.manifest import read_manifest

    result = read_manifest(manifest)
    probed = probe_all((i.audio for i in result.instances), workers, progress)
    groups: dict[tuple[str, str], GroupStats] = {}
    sources: dict[tuple[str, str], set[tuple]] = defaultdict(set)
    durations: dict[str, dict[tuple, float]] = defaultdict(dict)
    seen: dict[tuple, float | None] = {}
    for inst in result.instances:
        dom = domain_of(inst)
        g = groups.setdefault((inst.dataset, dom), GroupStats(inst.dataset, dom))
        g.instances += 1
        src = (inst.audio, inst.start, inst.end)
        if src in sources[(inst.dataset, dom)]:
            continue
        sources[(inst.dataset, dom)].add(src)
        header = probed[inst.audio]
        seconds = 0.0 if isinstance(header, str) else cut_duration(header, inst.start, inst.end)
        if seconds <= 0:  # no header, or a cut that covers no audio (as `pipeline plan` counts it)
            g.unreadable += 1
            seen[src] = None
            continue
        g.clips += 1
        g.hours += seconds / 3600
        durations[inst.dataset][src] = seconds
        seen[src] = seconds
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (k[0], DOMAINS.index(k[1])))]
    total = GroupStats("total", "all", instances=len(result.instances),
                       clips=sum(1 for v in seen.values() if v is not None),
                       hours=sum(v for v in seen.values() if v is not None) / 3600,
                       unreadable=sum(1 for v in seen.values() if v is None))
    bad = {a: r for a, r in probed.items() if isinstance(r, str)}
    counts = input_counts(result.instances)
    counts.readable = total.clips
    return ManifestStats(manifest=str(Path(manifest).resolve()), groups=ordered, total=total,
                         rejected_rows=len(result.rejects), unreadable=dict(sorted(bad.items())[:5]),
                         durations={ds: sorted(v.values()) for ds, v in sorted(durations.items())},
                         counts=counts)


def stats_rows(stats: ManifestStats) -> list[list[Any]]:
    """Table rows: one per group, then the totals row."""
    return [[g.dataset, g.domain, g.hours, g.clips, g.instances, g.unreadable]
            for g in [*stats.groups, stats.total]]


STATS_HEADERS = ["dataset", "domain", "hours", "readable sources", "manifest rows", "unreadable sources"]


def format_stats(stats: ManifestStats) -> str:
    """A plain-text table for the terminal (numbers right-aligned)."""
    cells = [STATS_HEADERS] + [[format_number(round(v, 3)) if isinstance(v, float) else format_number(v)
                                for v in row] for row in stats_rows(stats)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(STATS_HEADERS))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                             strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:-1]] + ["  ".join("-" * w for w in widths), line(cells[-1])]
    out.append(stats.counts.line())
    if stats.rejected_rows:
        out.append(f"({stats.rejected_rows} manifest row(s) rejected; see `alarm manifest check`)")
    for audio, reason in stats.unreadable.items():
        out.append(f"unreadable: {audio}: {reason}")
    return "\n".join(out)


def write_stats_report(stats: ManifestStats, out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json``, ``report.md`` and ``durations.png`` of a manifest's statistics in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, missing = {}, []
    if any(stats.durations.values()):
        figures["durations"] = histogram_figure(stats.durations, out / "durations.png", "clip duration (s)",
                                                "Clip durations per dataset", ylabel="clips").name
    else:
        missing.append("no readable clip: no duration histogram")
    if stats.total.unreadable:
        missing.append(f"{stats.total.unreadable} clip(s) unreadable (e.g. "
                       + "; ".join(f"{a}: {r}" for a, r in list(stats.unreadable.items())[:2]) + ")")
    data = {"kind": "stats", **stats.to_dict(), "figures": figures}
    key = {"manifest": stats.manifest, "audio": human_duration(stats.total.hours * 3600),
           **{name: n for name, n in stats.counts.labels()},
           "unreadable sources": stats.total.unreadable, "rejected manifest rows": stats.rejected_rows}
    sections = [Section("Hours and clips per dataset and domain", text=_domain_rule(), headers=STATS_HEADERS,
                        rows=stats_rows(stats), figure=figures.get("durations"),
                        caption="clip durations per dataset")]
    return write_report(out, "Manifest statistics", data, sections, key, missing)


def _domain_rule() -> str:
    return ("Domain: instruction (kind), else speech (a transcript), else music (music labels such as "
            "notes, tempo, genre, instrument, or a music dataset name), else sound. Hours count each "
            "readable source once. " + COUNTS_HELP)


def stats_json(stats: ManifestStats) -> str:
    """The machine-readable form printed by ``alarm stats --json``."""
    return json.dumps(stats.to_dict(), indent=2)
