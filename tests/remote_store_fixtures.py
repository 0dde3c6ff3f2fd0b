"""Feature stores on the test S3 server: a local store uploaded as it is, or with its parts moved under an
attempt prefix (the layout of the commit protocol without rename)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from alarm.pipeline.objects import open_objects
from alarm.pipeline.store_layout import DONE

LAYERS, DIM = 3, 16


def upload_tree(local: Path, url: str) -> str:
    """Put every file under ``local`` at the same key under ``url``; returns ``url``."""
    objects = open_objects(url)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            objects.put_file(path.relative_to(local).as_posix(), path)
    return url


def to_attempt_layout(store: Path, attempt: str = "a-0001") -> Path:
    """Move every committed part's files under ``parts/<part>/<attempt>/`` and name the attempt in its
    marker, as a writer with attempt prefixes leaves them (parts already so are left); returns ``store``."""
    for marker_path in sorted(Path(store).glob("features/*/*/parts/*/" + DONE)):
        part = marker_path.parent
        marker = json.loads(marker_path.read_text())
        if marker.get("attempt"):
            continue
        target = part / attempt
        target.mkdir()
        for item in sorted(part.iterdir()):
            if item.name not in (DONE, attempt):
                shutil.move(str(item), str(target / item.name))
        marker["attempt"] = attempt
        marker_path.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return store


def to_flat_layout(store: Path) -> Path:
    """Move every committed part's files from its attempt folder up to ``parts/<part>/`` and drop the
    attempt from its marker: the layout of stores written before attempts; returns ``store``."""
    for marker_path in sorted(Path(store).glob("features/*/*/parts/*/" + DONE)):
        part = marker_path.parent
        marker = json.loads(marker_path.read_text())
        attempt = marker.pop("attempt", None)
        if not attempt:
            continue
        for other in part.iterdir():  # abandoned attempts of the part
            if other.is_dir() and other.name != attempt:
                shutil.rmtree(other)
        for item in sorted((part / attempt).iterdir()):
            shutil.move(str(item), str(part / item.name))
        (part / attempt).rmdir()
        marker_path.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return store


def write_parts(root: Path, parts: int = 4, clips_per_part: int = 5, dtype: str = "float16",
                compressor: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A toy group of ``parts`` parts with small shards (many files); returns the clips written."""
    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    cfg = StoreConfig(dtype=dtype, chunk_frames=8, shard_frames=32, compressor=compressor)
    group = init_group(root, "toy", group_spec({"encoder": "toy", "seed": seed}, cfg), LAYERS, DIM, 50.0)
    rng = np.random.default_rng(seed)
    written = {}
    for p in range(parts):
        data = {f"p{p}-c{c}": rng.standard_normal((int(rng.integers(1, 70)), LAYERS, DIM)).astype(np.float32)
                for c in range(clips_per_part)}
        writer = PartWriter(group, f"part-{p:03d}", sum(len(v) for v in data.values()), LAYERS, DIM, cfg)
        for key, value in data.items():
            writer.append(key, value, len(value) / 50)
        writer.commit()
        written.update(data)
    write_index(group)
    return written
