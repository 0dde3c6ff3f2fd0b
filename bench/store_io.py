"""Loader throughput from a local feature store against the same store on object storage, cold and warm.
Prints ONE JSON line.

One whisper-shaped store (layers x dim float16, clips of 2-12 s at 50 frames/s, several parts) is
written locally and uploaded to an S3 server this script starts on 127.0.0.1 (moto in server mode,
as the tests do). The same clips are then read through a torch DataLoader (batches of clips, worker
processes, each worker opening the store lazily as the trainer's do) three times:

- ``local``: the local store (direct ``pread`` of the shard files, in the page cache after writing);
- ``s3_cold``: the s3:// store with an empty part cache: every file downloaded, checked, kept;
- ``s3_warm``: the s3:// store again with that cache full (new worker processes, as in a new epoch):
  local disk reads, no request.

Figures are clips/s and MB/s of stored feature bytes. moto is a Python server on loopback: the cold
figure measures this machine's moto, not a cloud store's bandwidth; warm against local is what the
cache is for.

Each is measured ``--rounds`` times (a new empty cache for each cold pass) and the median printed.
With workers, the figures include starting them: from a fork server for object storage (its client
does not survive a fork), by fork for a local store.

Usage: ``python bench/store_io.py [--clips 64] [--layers 4] [--dim 1280] [--parts 4] [--workers 0]
[--batch-clips 4] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def write_store(root: Path, frames: dict[str, int], layers: int, dim: int, parts: int) -> None:
    """One whisper group of random float16 features in ``parts`` parts."""
    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    cfg = StoreConfig()
    group = init_group(root, "whisper", group_spec({"name": "whisper", "preset": "bench-random", "layers": layers,
                                                    "dim": dim}, cfg), layers=layers, dim=dim, frame_rate=50.0)
    rng = np.random.default_rng(0)
    keys = list(frames)
    for p in range(parts):
        chunk = keys[p::parts]
        writer = PartWriter(group, f"part-{p:04d}", sum(frames[k] for k in chunk), layers, dim, cfg)
        for key in chunk:
            writer.append(key, rng.standard_normal((frames[key], layers, dim)).astype(np.float32), frames[key] / 50)
        writer.commit()
    write_index(group)


class MotoServer:
    """moto's S3 server on a free port of 127.0.0.1, in its own process group; stopped by its process id."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.environ.update({"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"})
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def bucket(self, name: str) -> str:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", method="PUT"), timeout=10).close()
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Clips:
    """Map-style dataset: a batch index -> the stored features of its clips (padded, as collate does)."""

    def __init__(self, reader: object, batches: list[list[str]]) -> None:
        self.reader, self.batches = reader, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> np.ndarray:
        arrays = [self.reader.read(k, stored=True) for k in self.batches[i]]
        out = np.zeros((len(arrays), max(a.shape[0] for a in arrays), *arrays[0].shape[1:]), arrays[0].dtype)
        for j, a in enumerate(arrays):
            out[j, :len(a)] = a
        return out


def measure(reader: object, batches: list[list[str]], workers: int, nbytes: int) -> dict[str, float]:
    """Read every batch once through a DataLoader; clips/s and stored MB/s."""
    from torch.utils.data import DataLoader

    reader = pickle.loads(pickle.dumps(reader))  # nothing opened yet, as in a new epoch's workers
    # As the trainer's loader: workers reading object storage start from a fork server (see trainer/data.py).
    from alarm.trainer.data import worker_context

    context = worker_context({"features": reader}) if workers else None
    loader = DataLoader(Clips(reader, batches), batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=4 if workers else None, multiprocessing_context=context)
    start = time.perf_counter()
    clips = sum(int(batch.shape[0]) for batch in loader)
    seconds = time.perf_counter() - start
    return {"clips_s": round(clips / seconds, 2), "mb_s": round(nbytes / seconds / 1e6, 2),
            "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-clips", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from alarm.pipeline.objects import open_objects
    from alarm.pipeline.part_cache import PartCache
    from alarm.pipeline.store import open_features

    rng = np.random.default_rng(1)
    frames = {f"clip{i:05d}": int(rng.integers(100, 600)) for i in range(args.clips)}
    keys = list(rng.permutation(sorted(frames)))  # the trainer's shuffled order
    batches = [keys[i:i + args.batch_clips] for i in range(0, len(keys), args.batch_clips)]
    nbytes = sum(frames.values()) * args.layers * args.dim * 2
    server = MotoServer()
    try:
        with tempfile.TemporaryDirectory(prefix="store-io-") as tmp:
            root = Path(tmp) / "store"
            write_store(root, frames, args.layers, args.dim, args.parts)
            url = f"s3://{server.bucket('bench')}/store"
            objects = open_objects(url)
            files = [p for p in sorted(root.rglob("*")) if p.is_file()]
            for path in files:
                objects.put_file(path.relative_to(root).as_posix(), path)
            local = open_features(root, "whisper")
            pickle.loads(pickle.dumps(local)).read(keys[0])  # the lazy imports of a first read, paid here
            runs: dict[str, list[dict]] = {"local": [], "s3_cold": [], "s3_warm": []}
            for r in range(args.rounds):  # the median of each: this machine is shared and noisy
                cache = PartCache(Path(tmp) / f"cache{r}", 10**11)  # empty: cold
                remote = open_features(url, "whisper", cache=cache)
                runs["s3_cold"].append(measure(remote, batches, args.workers, nbytes))
                runs["s3_warm"].append(measure(remote, batches, args.workers, nbytes))
                runs["local"].append(measure(local, batches, args.workers, nbytes))
            result = {"clips": len(keys), "stored_mb": round(nbytes / 1e6, 2), "layers": args.layers,
                      "dim": args.dim, "parts": args.parts, "objects": len(files), "workers": args.workers,
                      "batch_clips": args.batch_clips, "rounds": args.rounds,
                      **{mode: sorted(m, key=lambda x: x["clips_s"])[len(m) // 2] for mode, m in runs.items()}}
            result["cache_mb"] = round(cache.size() / 1e6, 2)
            result["warm_over_local"] = round(result["s3_warm"]["clips_s"] / result["local"]["clips_s"], 3)
            result["warm_over_cold"] = round(result["s3_warm"]["clips_s"] / result["s3_cold"]["clips_s"], 3)
    finally:
        server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
