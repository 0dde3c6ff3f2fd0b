"""Run reports: ``report.json`` (machine-readable) and ``report.md`` (tables and figures) per output folder.

Each stage calls one writer at its end, and ``alarm report DIR`` calls the same writer again:

* ``write_pipeline_report(store)``: clips, audio hours, bytes per encoder, stage throughput, the
  rejection table and a duration histogram per dataset (``durations.png``);
* ``write_train_report(run_dir)``: loss curves (``loss.png``: training loss raw and smoothed,
  validation loss overall and per dataset), best and final figures, the latest checkpoint, samples;
* ``write_rephrase_report(out_dir)``: counts per pass, validation kept and rejected per rule, a
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


def write_atomic_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    missing = list(missing or [])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    document = {"title": title, "created": created, "missing": missing, "data": data}
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    write_atomic_text(json_path, json.dumps(_strict(document), indent=2, default=str) + "\n")
    parts = [f"# {title}", f"_{created} · {out.resolve()}_"]
    if key_figures:
        parts.append("\n".join(f"- **{k}**: {format_number(v)}" for k, v in key_figures.items()))
    if missing:
        parts.append("**Missing or unreadable:**\n\n" + "\n".join(f"- {m}" for m in missing))
    parts += [s.markdown() for s in sections]
    write_atomic_text(md_path, "\n\n".join(parts) + "\n")
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


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def read_parquet_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a Parquet file, with those of ``columns`` it has (all when None); FileNotFoundError if absent."""
    import pyarrow.parquet as pq

    if columns is not None:
        present = set(pq.read_schema(_need(path)).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(_need(path), columns=columns).to_pylist()


def read_json(path: Path) -> Any:
    """A JSON file (FileNotFoundError if absent)."""
    return json.loads(_need(path).read_text())


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
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


def reject_kind(reason: str) -> str:
    """A reject reason's category: the text before its first colon (as ``pipeline.job`` counts them)."""
    return str(reason).split(":", 1)[0].strip()


def reject_table(rows: list[dict[str, Any]], id_key: str = "id", reason_key: str = "reason",
                 audio_key: str | None = "audio",
                 kind: Callable[[str], str] = reject_kind) -> list[dict[str, Any]]:
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
    from pipeline.verify import store_status

    groups = store_status(root)["groups"]
    for label, g in groups.items():
        g["bytes_on_disk"] = _folder_bytes(root / "features" / label)
    return groups


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
    key = {"clips": len(all_clips), "instances": len(instances),
           "audio": human_duration(sum(all_clips.values())), "rejected instances": len(rejects),
           "encoder groups": len(encoders), "features on disk": human_bytes(
               sum(g.get("bytes_on_disk", 0) for g in encoders.values())),
           "last job wall time": human_duration(summary.get("wall_seconds"))}
    sections = [
        Section("Datasets", headers=["dataset", "instances", "clips", "audio hours", "median s", "max s"],
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


# ------------------------------------------------------------------------------------------ training


def read_logs(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a ``logs.jsonl`` and the number of unreadable lines (a killed run may cut its last)."""
    records, bad = [], 0
    for line in _need(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _by_step(records: list[dict[str, Any]], field_name: str) -> list[dict[str, Any]]:
    # A resumed run logs again the steps after its last checkpoint: the latest record of a step wins.
    latest = {r["step"]: r for r in records if isinstance(r.get(field_name), (int, float))}
    return [latest[s] for s in sorted(latest)]


def write_train_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Report a training run from ``logs.jsonl``, ``config.yaml`` and ``checkpoints/``; draws ``loss.png``.

    Args:
        run_dir: the run folder (``output_dir`` of the config); the report is written into it.

    Returns:
        The paths of report.json and report.md.
    """
    root = Path(run_dir)
    missing: list[str] = []
    records, bad = attempt("logs.jsonl", lambda: read_logs(root / "logs.jsonl"), missing, ([], 0))
    if bad:
        missing.append(f"logs.jsonl: {bad} unreadable line(s) skipped")
    config = attempt("config.yaml", lambda: _read_yaml(root / "config.yaml"), missing, {}) or {}
    checkpoint = attempt("checkpoints", lambda: _latest_checkpoint(root), missing)
    train = _by_step(records, "loss")
    evals = _by_step(records, "eval_loss")
    losses = [float(r["loss"]) for r in train]
    smoothed = smooth(losses) if losses else []
    per_ds: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in evals:
        for ds, v in (r.get("eval_loss_per_dataset") or {}).items():
            per_ds[ds].append((r["step"], float(v)))
    best = min(evals, key=lambda r: r["eval_loss"], default=None)
    datasets = {ds: {"first": pts[0][1], "best": min(v for _, v in pts),
                     "best_step": min(pts, key=lambda p: p[1])[0], "final": pts[-1][1], "final_step": pts[-1][0]}
                for ds, pts in sorted(per_ds.items())}
    last = train[-1] if train else {}
    figures = {}
    if train or evals:
        figures["loss"] = loss_figure([(r["step"], float(r["loss"])) for r in train],
                                      [(r["step"], float(r["eval_loss"])) for r in evals], per_ds,
                                      root / "loss.png").name
    else:
        missing.append("no loss record in logs.jsonl: no loss curves")
    samples = [{"step": r["step"], "instance_id": s.get("instance_id"), "generated": s.get("generated", "")}
               for r in evals[-1:] for s in (r.get("samples") or [])]
    data = {
        "kind": "train", "run_dir": str(root.resolve()),
        "step": max([r["step"] for r in records], default=0),
        "train": {"first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                  "final_loss_smoothed": smoothed[-1] if smoothed else None,
                  "min_loss": min(losses) if losses else None, "tokens_per_s": last.get("tokens_per_s"),
                  "lr": last.get("lr"), "epoch": last.get("epoch"), "records": len(train)},
        "eval": {"steps": [r["step"] for r in evals], "loss": [r["eval_loss"] for r in evals],
                 "final": evals[-1]["eval_loss"] if evals else None,
                 "best": best["eval_loss"] if best else None, "best_step": best["step"] if best else None,
                 "per_dataset": datasets},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "config": {k: config.get(k) for k in ("llm", "encoders", "fusion", "targets", "store", "max_steps",
                                              "epochs", "lr", "batch_tokens") if k in config},
        "samples": samples, "figures": figures,
    }
    key = {"step": data["step"], "final train loss (smoothed)": data["train"]["final_loss_smoothed"],
           "final validation loss": data["eval"]["final"],
           "best validation loss": (f"{format_number(best['eval_loss'])} at step {best['step']:,}"
                                    if best else None),
           "tokens/s": data["train"]["tokens_per_s"], "checkpoint": data["checkpoint"]}
    sections = [
        Section("Loss", figure=figures.get("loss"), caption="training and validation loss"),
        Section("Validation loss per dataset", headers=["dataset", "first", "best", "best step", "final"],
                rows=[[ds, v["first"], v["best"], v["best_step"], v["final"]] for ds, v in datasets.items()]),
        Section("Validation history" + (f" (last {HISTORY_ROWS} of {len(evals)})" if len(evals) > HISTORY_ROWS
                                        else ""),
                headers=["step", "all", *datasets],
                rows=[[r["step"], r["eval_loss"], *[(r.get("eval_loss_per_dataset") or {}).get(ds)
                                                    for ds in datasets]] for r in evals[-HISTORY_ROWS:]]),
        Section(f"Sample generations (step {samples[0]['step']:,})" if samples else "Sample generations",
                headers=["instance", "generated"],
                rows=[[s["instance_id"], truncate(s["generated"])] for s in samples]),
        Section("Configuration", headers=["setting", "value"],
                rows=[[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                      for k, v in data["config"].items()]),
    ]
    return write_report(root, "Training report", data, sections, key, missing)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loaded = yaml.safe_load(_need(path).read_text())
    return loaded if isinstance(loaded, dict) else {}


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from trainer.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir)


# ------------------------------------------------------------------------------------------ rephrase


def _cache_counts(folder: Path) -> dict[str, int]:
    """ok / error / budget-forced / token counts of one pass's cache parts (best row per key)."""
    import pyarrow.parquet as pq

    best: dict[str, tuple[bool, float, bool, int]] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        cols = pq.read_table(part, columns=["key", "error", "forced", "n_tokens", "created"]).to_pydict()
        for key, err, forced, n, created in zip(cols["key"], cols["error"], cols["forced"], cols["n_tokens"],
                                                cols["created"], strict=True):
            row = (err is None, created or 0.0, bool(forced), int(n or 0))
            if key not in best or row[:2] > best[key][:2]:  # a success beats an error, then the newest
                best[key] = row
    rows = best.values()
    return {"rows": len(best), "ok": sum(r[0] for r in rows), "errors": sum(not r[0] for r in rows),
            "forced": sum(r[2] for r in rows), "tokens": sum(r[3] for r in rows)}


def _run_record(out: Path, missing: list[str]) -> dict[str, Any]:
    """The per-pass statistics ``run_rephrase`` saved in report.json (or kept in an earlier report of ours)."""
    if (out / "run_report.json").is_file():  # what run_rephrase saves
        return attempt("run_report.json", lambda: read_json(out / "run_report.json"), missing, {}) or {}
    record = attempt("report.json (run statistics)", lambda: read_json(out / REPORT_JSON), missing, {}) or {}
    if "data" in record and "title" in record:  # our own report replaced the run's: take its copy
        record = (record["data"] or {}).get("run") or {}
    return record


def write_rephrase_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Report a rephrase run folder: per-pass counts, validation per rule, target lengths, examples.

    Args:
        out_dir: the run folder of ``run_rephrase``; the report is written into it (its report.json,
            which held the run's per-pass statistics, becomes our report, which keeps them under ``run``).

    Returns:
        The paths of report.json and report.md.
    """
    import re

    out = Path(out_dir)
    missing: list[str] = []
    run = _run_record(out, missing)
    stats = attempt("stats.json", lambda: read_json(out / "stats.json"), missing, {}) or run.get("validation") or {}
    config = attempt("config.yaml", lambda: _read_yaml(out / "config.yaml"), missing, {}) or {}
    targets = attempt("targets.parquet", lambda: read_parquet_rows(
        out / "targets.parquet", ["instance_id", "dataset", "split", "n_tokens", "budget_forced", "target"]),
        missing, [])
    rejects = attempt("rejects.parquet", lambda: read_parquet_rows(out / "rejects.parquet"), missing, [])
    cache_root = Path(config.get("cache_dir") or out / "cache")
    passes: dict[str, dict[str, Any]] = {}
    for name in ("answer", "rephrase", "judge"):
        in_cache = _cache_counts(cache_root / name) if (cache_root / name).is_dir() else None
        if run.get(name) or in_cache:
            passes[name] = {"run": run.get(name), "cache": in_cache}
    if not passes:
        missing.append(f"no pass statistics (no run record, no cache under {cache_root})")

    # Lengths: kept targets carry n_tokens; length rejects carry it in their reason ("too_short: 37 < 100").
    lengths: dict[str, list[float]] = {"kept": [float(r["n_tokens"]) for r in targets if r.get("n_tokens") is not None]}
    for r in rejects:
        m = re.match(r"(too_short|too_long): (\d+)", str(r.get("reason") or ""))
        if m:
            lengths.setdefault(m.group(1).replace("_", " "), []).append(float(m.group(2)))
    lengths = {k: v for k, v in lengths.items() if v}
    figures = {}
    validate_cfg = config.get("validate") or {}
    if lengths:
        marks = {f"{k} {validate_cfg[k]}": float(validate_cfg[k]) for k in ("min_tokens", "max_tokens")
                 if isinstance(validate_cfg.get(k), (int, float))}
        figures["target_lengths"] = histogram_figure(lengths, out / "target_lengths.png", "target length (tokens)",
                                                     "Target lengths", ylabel="targets", marks=marks).name
    else:
        missing.append("no target length known: no length histogram")
    hits = stats.get("rule_hits") or {}
    # The rephrase rejects name their rule already ("leak:source_says" keeps its colon).
    by_rule = reject_table(rejects, id_key="instance_id", reason_key="rule", audio_key=None, kind=str)
    for row in by_rule:
        stages = Counter(r.get("stage") for r in rejects if str(r.get("rule") or "unknown") == row["reason"])
        row["stage"] = ", ".join(sorted(s for s in stages if s))
        row["hits"] = hits.get(row["reason"])
    examples = [{"instance_id": r["instance_id"], "dataset": r["dataset"], "target": r["target"]}
                for r in targets[:2]]
    if not examples:  # nothing kept: show what was rejected instead, so the reader sees why
        examples = [{"instance_id": r["instance_id"], "dataset": r.get("dataset"), "rule": r.get("rule"),
                     "target": r.get("target")} for r in rejects if r.get("target")][:2]
    data = {
        "kind": "rephrase", "out_dir": str(out.resolve()),
        "inputs": run.get("inputs", stats.get("inputs")), "input_rejects": run.get("input_rejects"),
        "passes": passes, "kept": stats.get("kept", len(targets)), "rejected": stats.get("rejected", len(rejects)),
        "pending": stats.get("pending"), "split": stats.get("split", {}),
        "kept_per_dataset": stats.get("kept_per_dataset", {}), "rejected_per_rule": by_rule, "rule_hits": hits,
        "target_tokens": {k: summarize(v) for k, v in lengths.items()},
        "examples": examples, "run": run, "figures": figures,
    }
    key = {"inputs": data["inputs"], "kept targets": data["kept"], "rejected": data["rejected"],
           "pending": data["pending"], "model": (config.get("engine") or {}).get("model")}
    pass_rows = []
    for name, p in passes.items():
        r, c = p["run"] or {}, p["cache"] or {}
        tok_s = r["tokens"] / r["seconds"] if r.get("seconds") else None
        pass_rows.append([name, r.get("requested"), r.get("cached"), r.get("generated"), r.get("errors"),
                          c.get("ok"), c.get("errors"), c.get("forced"), tok_s])
    sections = [
        Section("Passes", text="*This run*: requests, served from cache, generated now, errors now. "
                               "*Cache*: every generation the pass's cache holds (best row per request).",
                headers=["pass", "requests", "cached", "generated", "errors", "cache ok", "cache errors",
                         "budget-forced", "tokens/s"], rows=pass_rows),
        Section("Validation", text="Each rejected row counts once, under the first rule that hit it; "
                                   "*hits* counts every rule that matched a generated target.",
                headers=["rule", "stage", "rejected", "hits", "example ids"],
                rows=[["kept", "", data["kept"], None, ", ".join(r["instance_id"] for r in targets[:EXAMPLE_IDS])]]
                + [[r["reason"], r["stage"], r["count"], r["hits"], ", ".join(r["examples"])] for r in by_rule]),
        Section("Target lengths", headers=["group", "targets", "min", "median", "max"],
                rows=[[k, len(v), min(v), statistics.median(v), max(v)] for k, v in lengths.items()],
                figure=figures.get("target_lengths"), caption="target length histogram"),
        Section("Example targets" if targets else "Example rejected targets",
                headers=["instance", "dataset", "target"],
                rows=[[e["instance_id"], e["dataset"], truncate(e["target"] or "")] for e in examples]),
    ]
    return write_report(out, "Rephrase report", data, sections, key, missing)


WRITERS: dict[str, Callable[[Path], tuple[Path, Path]]] = {
    "pipeline": write_pipeline_report, "rephrase": write_rephrase_report, "train": write_train_report,
}


# ------------------------------------------------------------------------------------------ detection


def report_kind(folder: str | Path) -> str | None:
    """What stage wrote ``folder``: ``pipeline``, ``rephrase``, ``train``, or None."""
    root = Path(folder)
    if (root / "summary.json").is_file() or (root / "instances.parquet").is_file() or (root / "features").is_dir():
        return "pipeline"
    if (root / "config.yaml").is_file() and ((root / "run.json").is_file() or (root / "inputs.parquet").is_file()):
        return "rephrase"
    if (root / "logs.jsonl").is_file() or (root / "checkpoints").is_dir():
        return "train"
    return None


def write_any_report(folder: str | Path) -> list[tuple[str, Path]]:
    """(Re)write the report of ``folder`` by its kind; a folder of no known kind: each subfolder that has one.

    Returns:
        (kind, report.md path) per report written; empty when nothing was recognised.
    """
    root = Path(folder)
    kind = report_kind(root)
    if kind is not None:
        return [(kind, WRITERS[kind](root)[1])]
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        sub_kind = report_kind(sub)
        if sub_kind is not None:
            found.append((sub_kind, WRITERS[sub_kind](sub)[1]))
    return found
