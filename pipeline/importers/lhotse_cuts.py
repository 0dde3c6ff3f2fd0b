"""``lhotse``: a CutSet, or a RecordingSet plus a SupervisionSet, read with lhotse itself.

One instance per cut (a RecordingSet + SupervisionSet becomes one cut per recording, covering it
whole; ``per_supervision`` makes one cut per supervision instead). The cut's offset and duration
become ``start``/``end`` (left out when the cut is the whole recording). A cut with one supervision
gives ``metadata.transcript`` plus its ``speaker``, ``gender`` and ``language``; a cut with several
gives ``metadata.segments``, one turn per supervision, times relative to the cut, each with its
attributes (a language all turns share is lifted to the clip). Scalar ``custom`` fields of the cut
and of a single supervision are kept as metadata.

What we cannot represent is rejected with a reason, never guessed:

* a recording with several sources (one file per channel): our decoder reads one file;
* a source that is not a file (``url``, ``command``, ``memory``, ``shar``);
* a cut that keeps only some channels of a multi-channel file: our decoder mixes *all* channels to
  mono, so it would hear channels the cut left out (a cut over every channel is fine);
* a mixed or padding cut (several tracks, or silence), and a cut without a recording.

Relative source paths are resolved against ``audio_root``, by default the current folder, as lhotse
itself does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.rows import Collected, SourceError, audio_value, dataset_name, find_audio

TIME_DECIMALS = 6


@dataclass
class LhotseOptions:
    """How lhotse manifests map to our manifest."""

    supervisions: Path | None = None
    """A SupervisionSet to pair with a RecordingSet source."""
    dataset: str | None = None
    """The ``dataset`` of every row (default: the source's name)."""
    audio_root: Path | None = None
    """Folder relative source paths are relative to (default: the current folder)."""
    per_supervision: bool = False
    """One instance per supervision (its span) instead of one per cut."""


def load_cuts(src: Path, opts: LhotseOptions) -> Any:
    """The CutSet that ``src`` (and ``opts.supervisions``) describe, read lazily where lhotse can.

    Raises:
        SourceError: The files are missing, unreadable, or of the wrong manifest type.
    """
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest, load_manifest_lazy

    for path in (src, opts.supervisions):
        if path is not None and not Path(path).is_file():
            raise SourceError(f"{path} does not exist")
    try:
        # JSONL is read lazily (a CutSet of millions of cuts streams); other formats are loaded whole.
        manifest = load_manifest_lazy(src) if ".jsonl" in Path(src).name else load_manifest(src)
        sups = load_manifest(opts.supervisions) if opts.supervisions else None
    except Exception as err:  # lhotse raises ValueError/KeyError/JSON errors for a file it cannot type
        raise SourceError(f"{src} is not a lhotse manifest lhotse can read: {err}") from err
    if manifest is None:
        raise SourceError(f"{src} is empty")
    if isinstance(manifest, RecordingSet):
        if sups is not None and not isinstance(sups, SupervisionSet):
            raise SourceError(f"{opts.supervisions} is not a SupervisionSet")
        cuts = CutSet.from_manifests(recordings=manifest.to_eager(), supervisions=sups)
    elif isinstance(manifest, CutSet):
        if sups is not None:
            raise SourceError("--supervisions pairs with a RecordingSet; a CutSet carries its own")
        cuts = manifest
    else:
        raise SourceError(f"{src} is a {type(manifest).__name__}; give a CutSet, or a RecordingSet with "
                          "--supervisions")
    if opts.per_supervision:
        cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    return cuts


def _scalars(custom: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (custom or {}).items() if isinstance(v, (str, int, float, bool)) and v != ""}


def _turn(sup: Any) -> dict[str, Any]:
    turn: dict[str, Any] = {"start": round(max(0.0, sup.start), TIME_DECIMALS),
                            "end": round(max(0.0, sup.end), TIME_DECIMALS)}
    if sup.text:
        turn["text"] = sup.text
    for key in ("speaker", "gender", "language"):
        if getattr(sup, key, None):
            turn[key] = getattr(sup, key)
    return turn


def metadata_of(cut: Any) -> dict[str, Any]:
    """A cut's supervisions and custom fields as our metadata (see the module docstring)."""
    metadata = _scalars(cut.custom)
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    if len(sups) == 1:
        turn = _turn(sups[0])
        if "text" in turn:
            metadata["transcript"] = turn["text"]
        metadata.update({k: turn[k] for k in ("speaker", "gender", "language") if k in turn})
        metadata.update(_scalars(sups[0].custom))
    elif sups:
        turns = [_turn(s) for s in sups]
        languages = {t.get("language") for t in turns}
        if len(languages) == 1 and None not in languages:
            metadata["language"] = languages.pop()
            for t in turns:
                del t["language"]
        metadata["segments"] = turns
    return metadata


def audio_of_cut(cut: Any, root: Path, out_dir: Path) -> str:
    """The manifest ``audio`` of a mono or multi-channel cut; raises ValueError with the reject reason."""
    from lhotse.cut import MixedCut, PaddingCut

    if isinstance(cut, (MixedCut, PaddingCut)):
        raise ValueError(f"unsupported: a {type(cut).__name__} (several tracks or padding) has no single file")
    recording = cut.recording
    if recording is None:
        raise ValueError("missing: the cut has no recording")
    if len(recording.sources) != 1:
        raise ValueError(f"unsupported: the recording has {len(recording.sources)} sources (one file per "
                         "channel); our decoder reads one file, so merge them first")
    source = recording.sources[0]
    if source.type != "file":
        raise ValueError(f"unsupported: a '{source.type}' audio source; only files can be imported")
    channels = cut.channel if isinstance(cut.channel, list) else [cut.channel]
    if len(recording.channel_ids) > 1 and sorted(channels) != sorted(recording.channel_ids):
        raise ValueError(f"unsupported: the cut keeps channel(s) {channels} of a {recording.num_channels}-channel "
                         "recording; our decoder mixes every channel to mono")
    return audio_value(find_audio(str(source.source), root), out_dir)


def row_of(cut: Any, dataset: str, root: Path, out_dir: Path) -> dict[str, Any]:
    """The manifest row of one cut; raises ValueError with the reject reason."""
    row: dict[str, Any] = {"id": cut.id, "audio": audio_of_cut(cut, root, out_dir), "dataset": dataset}
    whole = cut.start <= 1e-6 and abs(cut.duration - cut.recording.duration) <= 1e-3
    if not whole:
        row["start"] = round(cut.start, TIME_DECIMALS)
        row["end"] = round(cut.start + cut.duration, TIME_DECIMALS)
    metadata = metadata_of(cut)
    if metadata:
        row["metadata"] = metadata
    return row


def import_lhotse(src: Path, out: Path, opts: LhotseOptions) -> Collected:
    """Map every cut to a manifest row; cuts we cannot represent become rejects with the reason.

    Raises:
        SourceError: The source is not a lhotse manifest of a usable type.
    """
    src, out = Path(src), Path(out)
    cuts = load_cuts(src, opts)
    dataset = dataset_name(src, opts.dataset)
    root = Path(opts.audio_root) if opts.audio_root else Path.cwd()
    out_dir = out.resolve().parent
    collected = Collected()
    number = 0
    try:
        for number, cut in enumerate(cuts, start=1):
            try:
                collected.add(number, row_of(cut, dataset, root, out_dir))
            except ValueError as err:
                collected.reject(number, cut.id, str(err))
    except Exception as err:  # a record lhotse cannot deserialise ends its lazy iterator
        raise SourceError(f"{src}: record {number + 1} is not one lhotse can read: {err}") from err
    return collected
