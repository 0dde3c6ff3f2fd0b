"""Run reports: ``report.json`` (machine-readable) and ``report.md`` (tables and figures) per output folder.

This module is the report framework every stage shares (sections, the writer, tolerant readers,
figures) plus the feature store's own report. Each stage calls one writer at its end, and
``alarm report DIR`` (``demo/report.py``) calls the same writer again:

* ``write_pipeline_report(store)``: clips, audio hours, bytes per encoder, stage throughput, the
  rejection table and a duration histogram per dataset (``durations.png``);
* ``trainer.report.write_train_report(run_dir)``: loss curves (``loss.png``: training loss raw and smoothed,
  validation loss overall and per dataset), best and final figures, the latest checkpoint, samples;
* ``rephrase.report.write_rephrase_report(out_dir)``: counts per pass, validation kept and rejected per rule, a
  target length histogram (``target_lengths.png``) and a few example targets.

The writers read only what the stages already left on disk and never raise on a partial or empty
folder: each input that is missing or unreadable is named under ``missing`` in both files, and the
rest is reported. A report must never fail the job that produced the data it describes.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.counts import COUNTS_HELP, ClipCounts, store_counts
from alarm.pipeline.formatting import format_number, human_bytes, human_duration, markdown_table, truncate
from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.store_layout import at, is_url, location, objects_at, read_bytes, read_parquet
from alarm.pipeline.store_summary import store_groups

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EXAMPLE_IDS = 3  # example ids per reject reason
HISTORY_ROWS = 20  # validation rounds listed in the training report


# ------------------------------------------------------------------------------------------ writer


@dataclass
class Section:
    """One part of ``report.md``: a heading, then text, a table and a figure (each optional).

    Attributes:
        title: the ``##`` heading.
        text: Markdown paragraphs under the heading.
        headers: table headers (no table when None).
        rows: table rows, one value per header.
        figure: PNG path relative to the report folder.
        caption: the figure's alt text.
    """

    title: str
    text: str = ""
    headers: list[str] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    figure: str | None = None
    caption: str = ""

    def markdown(self) -> str:
        parts = [f"## {self.title}"]
        if self.text:
            parts.append(self.text)
        if self.headers is not None:
            parts.append(markdown_table(self.headers, self.rows) if self.rows else "_(none)_")
        if self.figure:
            parts.append(f"![{self.caption or self.title}]({self.figure})")
        return "\n\n".join(parts)


def write_report(folder: str | Path, title: str, data: dict[str, Any], sections: list[Section],
                 key_figures: dict[str, Any] | None = None,
                 missing: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder``.

    Args:
        folder: where the report goes (created if missing).
        title: the Markdown title.
        data: the machine-readable content (JSON-able; stable keys).
        sections: the Markdown body.
        key_figures: label -> value, listed under the title.
        missing: inputs that were absent or unreadable, listed in both files.

    Returns:
        The paths of report.json and report.md.
    """
    from alarm.pipeline.store_layout import write_atomic  # whole objects: a reader never sees half a report

    out = location(folder)  # a local folder (created if missing) or an object-store URL
    missing = list(missing or [])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {"title": title, "created": created, "missing": missing, "data": data}
    json_path, md_path = at(out, REPORT_JSON), at(out, REPORT_MD)
    write_atomic(json_path, (json.dumps(_strict(document), indent=2, default=str) + "\n").encode())
    parts = [f"# {title}", f"_{created} · {out if is_url(out) else out.resolve()}_"]
    if key_figures:
        parts.append("\n".join(f"- **{k}**: {format_number(v)}" for k, v in key_figures.items()))
    if missing:
        parts.append("**Missing or unreadable:**\n\n" + "\n".join(f"- {m}" for m in missing))
    parts += [s.markdown() for s in sections]
    write_atomic(md_path, ("\n\n".join(parts) + "\n").encode())
    return json_path, md_path


def _strict(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None: strict JSON that every reader accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def attempt(label: str, fn: Callable[[], Any], missing: list[str], default: Any = None) -> Any:
    """``fn()``, or ``default`` with ``label`` and the reason appended to ``missing``.

    Reports run at the end of long jobs and over folders a killed job left behind; any failure to
    read one input (missing file, truncated Parquet, bad JSON) must cost that part of the report,
    not the job, hence the broad catch.
    """
    try:
        return fn()
    except FileNotFoundError:
        missing.append(f"{label}: not found")
    except Exception as err:  # noqa: BLE001 - see the docstring
        missing.append(f"{label}: unreadable ({type(err).__name__}: {truncate(str(err), 160)})")
    return default


def need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def read_parquet_rows(path: Path | str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a Parquet file or object, with those of ``columns`` it has (all when None); FileNotFoundError if absent."""
    table = read_parquet(path)
    if table is None:
        raise FileNotFoundError(path)
    return table.select([c for c in columns if c in table.column_names] if columns else table.column_names).to_pylist()


def read_json(path: Path | str) -> Any:
    """A JSON file or object (FileNotFoundError if absent)."""
    data = read_bytes(path)
    if data is None:
        raise FileNotFoundError(path)
    return json.loads(data)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """min / median / mean / max of ``values`` (None each when empty)."""
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "mean": statistics.fmean(values),
            "max": max(values)}


# ------------------------------------------------------------------------------------------ figures


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    # The object API with its own Agg canvas: no pyplot global state, no display backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    import io

    from alarm.pipeline.store_layout import write_atomic

    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())
    return path


def histogram_figure(groups: dict[str, list[float]], path: Path, xlabel: str, title: str,
                     ylabel: str = "count", marks: dict[str, float] | None = None) -> Path:
    """Overlaid step histograms, one per group, on shared bins; ``marks`` draw labelled vertical lines."""
    import numpy as np

    values = [v for vs in groups.values() for v in vs]
    ends = values + list((marks or {}).values())  # the thresholds stay in view
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, max(10, min(50, int(math.sqrt(len(values))) * 2)) + 1)
    fig = _figure()
    ax = fig.add_subplot()
    for name, vs in sorted(groups.items()):
        ax.hist(vs, bins=bins, histtype="step", linewidth=1.6, label=f"{name} ({len(vs):,})")
    for label, x in (marks or {}).items():
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                    fontsize=8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if groups:
        ax.legend(fontsize=8)
    return _save(fig, path)


def smooth(values: Sequence[float], window: float | None = None) -> list[float]:
    """Debiased exponential moving average; the default window is a tenth of the series (>= 1)."""
    n = len(values)
    window = window or max(1.0, n / 10)
    beta = min(0.98, 1 - 1 / window)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i) if beta > 0 else v)
    return out


def loss_figure(train: list[tuple[int, float]], evals: list[tuple[int, float]],
                per_dataset: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Training loss (raw and smoothed) and validation loss (overall and per dataset) against step."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train (raw)")
        ax.plot(steps, smooth(losses), color="tab:blue", linewidth=2, label="train (smoothed)")
    if evals:
        steps, losses = zip(*evals, strict=True)
        ax.plot(steps, losses, color="black", marker="o", linewidth=1.5, label="validation (all)")
    for name, points in sorted(per_dataset.items()):
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, linestyle="--", marker=".", linewidth=1, label=f"validation: {name}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats per target token)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ pipeline


def reject_table(rows: list[dict[str, Any]], id_key: str = "id", reason_key: str = "reason",
                 audio_key: str | None = "audio",
                 kind: Callable[[str], str] = reason_kind) -> list[dict[str, Any]]:
    """Rejects grouped by ``kind(reason)``, most frequent first: count, distinct audio, example ids and message."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[kind(r.get(reason_key) or "unknown")].append(r)
    table = []
    for kind, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        ids = sorted({str(m.get(id_key)) for m in members if m.get(id_key) is not None})
        audio = {m.get(audio_key) for m in members if audio_key and m.get(audio_key)}
        table.append({"reason": kind, "count": len(members), "clips": len(audio) if audio_key else None,
                      "examples": ids[:EXAMPLE_IDS], "example_reason": str(members[0].get(reason_key) or "")})
    return table


def _read_store(root: Path, missing: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                         list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The store's summary, instance rows, reject rows and encoder groups; what is unreadable goes to ``missing``."""
    summary = attempt("summary.json", lambda: read_json(at(root, "summary.json")), missing, {}) or {}
    instances = attempt("instances.parquet", lambda: read_parquet_rows(
        at(root, "instances.parquet"), ["id", "key", "dataset", "duration"]), missing, [])
    rejects = attempt("rejects.parquet", lambda: read_parquet_rows(
        at(root, "rejects.parquet"), ["id", "audio", "reason"]), missing, [])
    groups: dict[str, dict[str, Any]] = {}
    if objects_at(at(root, "features")).list_dirs():
        groups = attempt("feature groups", lambda: store_groups(root), missing, {}) or {}
    else:
        missing.append("features/: not found (no encoder has written yet)")
    absent = [c for c in ("key", "dataset", "duration") if instances and c not in instances[0]]
    if absent:
        missing.append(f"instances.parquet lacks column(s) {', '.join(absent)}")
    return summary, instances, rejects, groups


def _clips_per_dataset(instances: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]],
                                                                dict[str, dict[str, Any]]]:
    """Clip durations by dataset and clip key, and the per-dataset table (instances, clips, hours, durations)."""
    # One duration per distinct clip key and dataset: a clip shared by several prompts counts once.
    clips: dict[str, dict[str, float]] = defaultdict(dict)
    inst_per_ds: Counter[str] = Counter()
    for r in instances:
        ds = str(r.get("dataset") or "(none)")
        inst_per_ds[ds] += 1
        if r.get("key") is not None and r.get("duration") is not None:
            clips[ds][r["key"]] = float(r["duration"])
    per_dataset = {ds: {"instances": inst_per_ds[ds], "clips": len(clips.get(ds, {})),
                        "audio_hours": sum(clips.get(ds, {}).values()) / 3600,
                        "duration_s": summarize(sorted(clips.get(ds, {}).values()))}
                   for ds in sorted(inst_per_ds)}
    return clips, per_dataset


def _encoders_and_stages(groups: dict[str, dict[str, Any]], summary: dict[str, Any],
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each encoder group with what the last job wrote to it, and each stage's time and throughput."""
    encoders = {}
    for label, g in sorted(groups.items()):
        enc = g["encoder"]
        encoders[label] = {**g, "encoded_last_run": summary.get("encoded", {}).get(enc),
                           "bytes_written_last_run": summary.get("bytes_written", {}).get(enc)}
    stage_s = summary.get("stage_seconds", {}) or {}
    stages = {k: {"seconds": v, "audio_x_realtime": (summary.get("throughput") or {}).get(k)}
              for k, v in stage_s.items()}
    return encoders, stages


def _store_sections(per_dataset: dict[str, dict[str, Any]], rejected: list[dict[str, Any]],
                    encoders: dict[str, dict[str, Any]], stages: dict[str, dict[str, Any]],
                    figures: dict[str, str]) -> list[Section]:
    """The store report's Markdown body: datasets, rejects, encoders, stages."""
    return [
        Section("Datasets", text=COUNTS_HELP,
                headers=["dataset", "manifest rows", "stored clips", "audio hours", "median s", "max s"],
                rows=[[ds, v["instances"], v["clips"], v["audio_hours"], v["duration_s"]["median"],
                       v["duration_s"]["max"]] for ds, v in per_dataset.items()],
                figure=figures.get("durations"), caption="clip durations per dataset"),
        Section("Rejected", text="Instances dropped before encoding, by reason (see rejects.parquet).",
                headers=["reason", "instances", "clips", "example ids", "example reason"],
                rows=[[r["reason"], r["count"], r["clips"], ", ".join(r["examples"]),
                       truncate(r["example_reason"], 100)] for r in rejected]),
        Section("Encoders", headers=["group", "done", "pending", "parts", "on disk", "encoded last run",
                                     "written last run"],
                rows=[[label, g["done"], g["pending"], g["parts"], human_bytes(g["bytes_on_disk"]),
                       g["encoded_last_run"], human_bytes(g["bytes_written_last_run"])]
                      for label, g in encoders.items()]),
        Section("Stages of the last job",
                text="Throughput is seconds of audio per second of stage time (× real time).",
                headers=["stage", "seconds", "× real time"],
                rows=[[k, v["seconds"], v["audio_x_realtime"]] for k, v in stages.items()]),
    ]


def write_pipeline_report(store: str | Path) -> tuple[Path, Path]:
    """Report a feature store from ``summary.json``, ``instances.parquet``, ``rejects.parquet`` and its groups.

    Args:
        store: the store folder; the report is written into it.

    Returns:
        The paths of report.json and report.md.
    """
    root = location(store)
    missing: list[str] = []
    summary, instances, rejects, groups = _read_store(root, missing)
    clips, per_dataset = _clips_per_dataset(instances)
    all_clips = {k: d for per in clips.values() for k, d in per.items()}
    rejected = reject_table(rejects)
    encoders, stages = _encoders_and_stages(groups, summary)
    figures = {}
    groups_s = {ds: list(per.values()) for ds, per in clips.items() if per}
    if groups_s:
        figures["durations"] = str(histogram_figure(groups_s, at(root, "durations.png"), "clip duration (s)",
                                                    "Clip durations per dataset", ylabel="clips")).rsplit("/", 1)[-1]
    else:
        missing.append("no accepted clip with a duration: no duration histogram")
    data = {
        "kind": "pipeline", "store": str(root if is_url(root) else root.resolve()),
        "instances": len(instances), "clips": len(all_clips), "audio_hours": sum(all_clips.values()) / 3600,
        "rejected_instances": len(rejects), "per_dataset": per_dataset, "rejected": rejected,
        "encoders": encoders, "stages": stages, "wall_seconds": summary.get("wall_seconds"),
        "summary": summary, "figures": figures,
    }
    counts = attempt("clip counts", lambda: store_counts(root), missing, ClipCounts()) or ClipCounts()
    data["counts"] = counts.to_dict()
    key = {**{name: n for name, n in counts.labels()},
           "audio": human_duration(sum(all_clips.values())), "rejected instances": len(rejects),
           "encoder groups": len(encoders), "features on disk": human_bytes(
               sum(g.get("bytes_on_disk", 0) for g in encoders.values())),
           "last job wall time": human_duration(summary.get("wall_seconds"))}
    sections = _store_sections(per_dataset, rejected, encoders, stages, figures)
    return write_report(root, "Feature store report", data, sections, key, missing)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty dict when the file holds something else)."""
    import yaml

    loaded = yaml.safe_load(need(path).read_text())
    return loaded if isinstance(loaded, dict) else {}
