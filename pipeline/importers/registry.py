"""The importers by format name: ``alarm manifest import FORMAT`` takes its choices from here.

Each importer is ``(src, out, options) -> Collected``: manifest rows and rejects, nothing written yet
(``rows.write_import`` checks and writes them), plus its options dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.alarm_corpora import CorporaOptions, import_alarm_corpora
from alarm.pipeline.importers.csv_table import CsvOptions, import_csv
from alarm.pipeline.importers.hf_audio import HfAudioOptions, import_hf_audio
from alarm.pipeline.importers.lhotse_cuts import LhotseOptions, import_lhotse
from alarm.pipeline.importers.rows import Collected

Importer = Callable[[Path, Path, Any], Collected]

IMPORTERS: dict[str, tuple[Importer, type]] = {
    "lhotse": (import_lhotse, LhotseOptions),
    "hf-audio": (import_hf_audio, HfAudioOptions),
    "alarm-corpora": (import_alarm_corpora, CorporaOptions),
    "csv": (import_csv, CsvOptions),
}
"""format name -> (importer, its options dataclass)."""
