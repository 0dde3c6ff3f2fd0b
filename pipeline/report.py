"""Run reports: ``report.json`` (machine-readable) and ``report.md`` (tables and figures) per output folder.

Each stage calls one writer at its end, and ``alarm report DIR`` calls the same writer again:

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
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.manifest import reason_kind

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EXAMPLE_IDS = 3  # example ids per reject reason
SAMPLE_CHARS = 300  # generated text shown per sample
HISTORY_ROWS = 20  # validation rounds listed in the training report


# ------------------------------------------------------------------------------------------ formatting


def format_number(value: Any) -> str:
    """A table cell: thousands separators for big numbers, 4 significant digits for small floats."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units)."""
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable; keeps type checkers happy


def human_duration(seconds: float | None) -> str:
    """``0.25`` -> ``250 ms``, ``75`` -> ``1 min 15 s``, ``7500`` -> ``2 h 05 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _cell(value: Any) -> str:
    # A pipe or newline inside a cell would break the Markdown table.
    return format_number(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; columns holding only numbers are right-aligned and formatted."""
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def truncate(text: str, limit: int = SAMPLE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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
    from alarm.pipeline.store_layout import (
        write_atomic,  # temporary file and rename: a reader never sees half a report
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    missing = list(missing or [])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {"title": title, "created": created, "missing": missing, "data": data}
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    write_atomic(json_path, (json.dumps(_strict(document), indent=2, default=str) + "\n").encode())
    parts = [f"# {title}", f"_{created} · {out.resolve()}_"]
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


def read_parquet_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a Parquet file, with those of ``columns`` it has (all when None); FileNotFoundError if absent."""
    import pyarrow.parquet as pq

    if columns is not None:
        present = set(pq.read_schema(need(path)).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(need(path), columns=columns).to_pylist()


def read_json(path: Path) -> Any:
    """A JSON file (FileNotFoundError if absent)."""
    return json.loads(need(path).read_text())


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


def _folder_bytes(folder: Path) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_size
            except OSError:  # removed while we walk (a concurrent job's temporary file)
                pass
    return total


def _groups(root: Path) -> dict[str, dict[str, Any]]:
    from alarm.pipeline.verify import store_status

    groups = store_status(root)["groups"]
    for label, g in groups.items():
        g["bytes_on_disk"] = _folder_bytes(root / "features" / label)
    return groups


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A feature job's summary (``summary.json``) in four lines for the terminal.

    Example::

        stored: 31 clips, 43.2 s of audio (0.012 h), 34 instances read
        rejected: 3 instances (too short 1, unreadable 2)
        encoders: whisper 31, w2vbert 31 clips stored; 62 clip encodings computed now, 0 already stored
        written: 1.2 MiB in 12.3 s
    """
    audio_s = float(summary.get("audio_hours") or 0.0) * 3600
    rejected = summary.get("rejected") or {}
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0])))
    stored = summary.get("stored") or {}
    encoded = sum((summary.get("encoded") or {}).values())
    skipped = sum((summary.get("skipped") or {}).values())
    return [
        f"stored: {summary.get('clips', 0):,} clips, {human_duration(audio_s)} of audio ({audio_s / 3600:.3g} h), "
        f"{summary.get('instances', 0):,} instances read",
        f"rejected: {sum(rejected.values()):,} instances" + (f" ({by_kind})" if by_kind else ""),
        "encoders: " + ", ".join(f"{e} {n:,}" for e, n in stored.items())
        + f" clips stored; {encoded:,} clip encodings computed now, {skipped:,} already stored",
        f"written: {human_bytes(sum((summary.get('bytes_written') or {}).values()))} "
        f"in {human_duration(summary.get('wall_seconds'))}",
    ]


def write_pipeline_report(store: str | Path) -> tuple[Path, Path]:
    """Report a feature store from ``summary.json``, ``instances.parquet``, ``rejects.parquet`` and its groups.

    Args:
        store: the store folder; the report is written into it.

    Returns:
        The paths of report.json and report.md.
    """
    root = Path(store)
    missing: list[str] = []
    summary = attempt("summary.json", lambda: read_json(root / "summary.json"), missing, {}) or {}
    instances = attempt("instances.parquet", lambda: read_parquet_rows(
        root / "instances.parquet", ["id", "key", "dataset", "duration"]), missing, [])
    rejects = attempt("rejects.parquet", lambda: read_parquet_rows(
        root / "rejects.parquet", ["id", "audio", "reason"]), missing, [])
    groups: dict[str, dict[str, Any]] = {}
    if (root / "features").is_dir():
        groups = attempt("feature groups", lambda: _groups(root), missing, {}) or {}
    else:
        missing.append("features/: not found (no encoder has written yet)")
    absent = [c for c in ("key", "dataset", "duration") if instances and c not in instances[0]]
    if absent:
        missing.append(f"instances.parquet lacks column(s) {', '.join(absent)}")

    # One duration per distinct clip key and dataset: a clip shared by several prompts counts once.
    clips: dict[str, dict[str, float]] = defaultdict(dict)
    inst_per_ds: Counter[str] = Counter()
    for r in instances:
        ds = str(r.get("dataset") or "(none)")
        inst_per_ds[ds] += 1
        if r.get("key") is not None and r.get("duration") is not None:
            clips[ds][r["key"]] = float(r["duration"])
    all_clips = {k: d for per in clips.values() for k, d in per.items()}
    per_dataset = {ds: {"instances": inst_per_ds[ds], "clips": len(clips.get(ds, {})),
                        "audio_hours": sum(clips.get(ds, {}).values()) / 3600,
                        "duration_s": summarize(sorted(clips.get(ds, {}).values()))}
                   for ds in sorted(inst_per_ds)}
    rejected = reject_table(rejects)
    encoders = {}
    for label, g in sorted(groups.items()):
        enc = g["encoder"]
        encoders[label] = {**g, "encoded_last_run": summary.get("encoded", {}).get(enc),
                           "bytes_written_last_run": summary.get("bytes_written", {}).get(enc)}
    stage_s = summary.get("stage_seconds", {}) or {}
    stages = {k: {"seconds": v, "audio_x_realtime": (summary.get("throughput") or {}).get(k)}
              for k, v in stage_s.items()}
    figures = {}
    groups_s = {ds: list(per.values()) for ds, per in clips.items() if per}
    if groups_s:
        figures["durations"] = histogram_figure(groups_s, root / "durations.png", "clip duration (s)",
                                                "Clip durations per dataset", ylabel="clips").name
    else:
        missing.append("no accepted clip with a duration: no duration histogram")
    data = {
        "kind": "pipeline", "store": str(root.resolve()),
        "instances": len(instances), "clips": len(all_clips), "audio_hours": sum(all_clips.values()) / 3600,
        "rejected_instances": len(rejects), "per_dataset": per_dataset, "rejected": rejected,
        "encoders": encoders, "stages": stages, "wall_seconds": summary.get("wall_seconds"),
        "summary": summary, "figures": figures,
    }
    from alarm.pipeline.counts import COUNTS_HELP, ClipCounts, store_counts

    counts = attempt("clip counts", lambda: store_counts(root), missing, ClipCounts()) or ClipCounts()
    data["counts"] = counts.to_dict()
    key = {**{name: n for name, n in counts.labels()},
           "audio": human_duration(sum(all_clips.values())), "rejected instances": len(rejects),
           "encoder groups": len(encoders), "features on disk": human_bytes(
               sum(g.get("bytes_on_disk", 0) for g in encoders.values())),
           "last job wall time": human_duration(summary.get("wall_seconds"))}
    sections = [
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
    return write_report(root, "Feature store report", data, sections, key, missing)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty dict when the file holds something else)."""
    import yaml

    loaded = yaml.safe_load(need(path).read_text())
    return loaded if isinstance(loaded, dict) else {}


# ------------------------------------------------------------------------------------------ detection


def report_kind(folder: str | Path) -> str | None:
    """What wrote ``folder``: ``pipeline``, ``rephrase``, ``train``, ``eval``, ``stats``, or None."""
    root = Path(folder)
    if (root / "summary.json").is_file() or (root / "instances.parquet").is_file() or (root / "features").is_dir():
        return "pipeline"
    if (root / "config.yaml").is_file() and ((root / "run.json").is_file() or (root / "inputs.parquet").is_file()):
        return "rephrase"
    if (root / "logs.jsonl").is_file() or (root / "checkpoints").is_dir():
        return "train"
    if (root / "predictions.jsonl").is_file():
        return "eval"
    if (root / REPORT_JSON).is_file():
        kind = attempt("report.json", lambda: read_json(root / REPORT_JSON)["data"]["kind"], [])
        return "stats" if kind == "stats" else None
    return None


def write_stats_report_again(folder: Path) -> tuple[Path, Path]:
    """The ``alarm stats --out`` report of ``folder`` again, from the manifest its report.json names.

    Raises:
        FileNotFoundError: that manifest is gone.
    """
    from alarm.pipeline.stats import manifest_stats, write_stats_report

    manifest = read_json(folder / REPORT_JSON)["data"]["manifest"]
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"{folder}: the manifest its statistics came from, {manifest}, is gone")
    return write_stats_report(manifest_stats(manifest), folder)


def write_any_report(folder: str | Path, depth: int = 3) -> list[tuple[str, Path]]:
    """(Re)write the report of ``folder`` by its kind; a folder of no known kind: of each output folder below it.

    Args:
        folder: an output folder (store, rephrase run, training run, evaluation, statistics), or a folder
            holding some (a demo output; ``runs/`` with one training run per stage).
        depth: how many levels of unknown folders to look through.

    Returns:
        (kind, report.md path) per report written; empty when nothing was recognised.
    """
    from alarm.rephrase.report import write_rephrase_report
    from alarm.trainer.evaluate import rewrite_eval_report
    from alarm.trainer.report import write_train_report

    def write_eval_report(path: Path) -> tuple[Path, Path]:
        report = rewrite_eval_report(path)
        return report.report_json, report.report_md

    writers: dict[str, Callable[[Path], tuple[Path, Path]]] = {
        "pipeline": write_pipeline_report, "rephrase": write_rephrase_report, "train": write_train_report,
        "eval": write_eval_report, "stats": write_stats_report_again,
    }
    root = Path(folder)
    kind = report_kind(root)
    if kind is not None:
        return [(kind, writers[kind](root)[1])]
    found = []
    if depth > 0 and root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += write_any_report(sub, depth - 1)
    return found
