"""Importer throughput: `alarm manifest import hf-audio` on embedded WAVs, and `csv` on the same clips as
files. Prints ONE JSON line.

A temporary folder gets ``--clips`` distinct WAVs of ``--seconds`` of 16 kHz 16-bit noise, twice over:

- ``hf-audio``: one Parquet file as the hub lays it out (``data/train-00000-of-00001.parquet``, row
  groups of 100 rows as ``datasets`` writes audio), an ``audio`` column of ``{"bytes", "path"}``
  structs (the ``Audio`` feature's storage) and a ``caption`` column. The importer copies each
  clip's bytes into tar shards beside the manifest: the figure is a copy of the audio.
- ``csv``: the same clips as WAV files and a CSV naming them (``--map audio=file
  --map caption=caption``). The importer only checks that each file exists: its MB/s counts audio
  referenced, not read.

Each round runs the importer and writes the manifest and its rejects exactly as the command does
(``IMPORTERS[fmt]``, then ``rows.write_import``), into a new output folder; the median round (by
wall time) of each is printed, with its process CPU seconds. ``hf_audio_cli`` is the whole command,
``alarm manifest import hf-audio SRC OUT --caption caption``, in a new Python process: the import plus
starting Python and importing the CLI (its CPU seconds are the child's). The source was just written,
so it is read from the page cache: the figures are the importer's own cost, not a disk's.

Usage: ``python bench/importers.py [--clips 5000] [--seconds 1.0] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
ROW_GROUP = 100  # rows per Parquet row group, as `datasets` writes audio columns


def wav_bytes(rng: np.random.Generator, seconds: float) -> bytes:
    """One mono 16-bit WAV of quiet noise (each clip differs, as a real corpus's do)."""
    samples = (rng.standard_normal(int(RATE * seconds)) * 3000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_sources(root: Path, clips: int, seconds: float) -> tuple[Path, Path, int]:
    """The hub-style Parquet and the CSV with its files, over the same clips; (parquet, csv, audio bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = root / "hub" / "data" / "train-00000-of-00001.parquet"
    table_csv = root / "files" / "clips.csv"
    parquet.parent.mkdir(parents=True)
    (table_csv.parent / "audio").mkdir(parents=True)
    schema = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("caption", pa.string())])
    rng = np.random.default_rng(0)
    total = 0
    with pq.ParquetWriter(parquet, schema) as writer, open(table_csv, "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["file", "caption"])
        for start in range(0, clips, ROW_GROUP):
            batch = []
            for i in range(start, min(start + ROW_GROUP, clips)):
                data = wav_bytes(rng, seconds)
                total += len(data)
                name, caption = f"clip{i:06d}.wav", f"noise clip number {i}"
                (table_csv.parent / "audio" / name).write_bytes(data)
                rows.writerow([f"audio/{name}", caption])
                batch.append({"audio": {"bytes": data, "path": name}, "caption": caption})
            writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=ROW_GROUP)
    return parquet.parent.parent, table_csv, total


def run_import(fmt: str, src: Path, out: Path, opts: Any, clips: int, audio_bytes: int) -> dict[str, float]:
    """One import as the command runs it, timed; raises if any clip was lost."""
    from alarm.pipeline.importers.registry import IMPORTERS
    from alarm.pipeline.importers.rows import write_import

    importer, _ = IMPORTERS[fmt]
    started, cpu = time.perf_counter(), time.process_time()
    summary = write_import(importer(src, out, opts), out)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if summary.instances != clips or summary.rejected:
        raise RuntimeError(f"{fmt}: {summary.instances} of {clips} clips imported, {summary.rejected} rejected")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "clips_s": round(clips / wall, 1),
            "mb_s": round(audio_bytes / 1e6 / wall, 1)}


def run_command(src: Path, out: Path, clips: int, audio_bytes: int) -> dict[str, float]:
    """``alarm manifest import hf-audio`` in a new process (the console script's entry point), timed."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from alarm.cli import run; run()", "manifest", "import",
                           "hf-audio", str(src), str(out), "--caption", "caption"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or f"hf-audio: {clips} instances" not in done.stdout:
        raise RuntimeError(f"the command failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 3),
            "clips_s": round(clips / wall, 1), "mb_s": round(audio_bytes / 1e6 / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from alarm.pipeline.importers.csv_table import CsvOptions
    from alarm.pipeline.importers.hf_audio import HfAudioOptions

    with tempfile.TemporaryDirectory(prefix="bench-importers-") as tmp:
        root = Path(tmp)
        hub, table_csv, audio_bytes = write_sources(root, args.clips, args.seconds)
        parquet_bytes = sum(p.stat().st_size for p in hub.rglob("*.parquet"))
        load_start = os.getloadavg()
        runs: dict[str, list[dict[str, float]]] = {"hf_audio": [], "csv": [], "hf_audio_cli": []}
        for r in range(args.rounds):  # the median of each: this machine is shared and noisy
            out = root / f"out{r}"
            runs["hf_audio"].append(run_import("hf-audio", hub, out / "hf" / "manifest.jsonl",
                                               HfAudioOptions(caption="caption"), args.clips, audio_bytes))
            runs["csv"].append(run_import("csv", table_csv, out / "csv" / "manifest.jsonl",
                                          CsvOptions(mapping={"audio": "file", "caption": "caption"}),
                                          args.clips, audio_bytes))
            runs["hf_audio_cli"].append(run_command(hub, out / "cli" / "manifest.jsonl", args.clips, audio_bytes))
            shutil.rmtree(out)  # the shards are a copy of the corpus: one round's at a time on disk
        result = {"bench": "importers", "clips": args.clips, "seconds": args.seconds,
                  "audio_mb": round(audio_bytes / 1e6, 1), "parquet_mb": round(parquet_bytes / 1e6, 1),
                  "rounds": args.rounds,
                  **{fmt: sorted(m, key=lambda x: x["wall_s"])[len(m) // 2] for fmt, m in runs.items()},
                  "load_avg_start": [round(x, 2) for x in load_start],
                  "load_avg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
