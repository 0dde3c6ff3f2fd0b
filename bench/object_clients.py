"""obstore against fsspec/s3fs on the same S3 server: the measurement behind choosing obstore.

Prints ONE JSON line. Starts moto's S3 server on 127.0.0.1 (``--server-python`` runs it; default this
interpreter) unless ``AWS_ENDPOINT_URL`` is set, then for each client that imports:

* big objects: put then get ``--big`` objects of ``--big-mb`` MB each (a store's shard files), MB/s;
* small objects: put then get ``--small`` objects of 4 KB (markers, specs, clip tables), objects/s;
* ranged reads: ``--ranges`` random 64 KB ranges of one big object (a reader's chunk reads), reads/s.

The figures are those of a local server on a loopback link: they compare per-request overhead and
client throughput, not a cloud's network. Needs ``obstore`` and, for the second column, ``s3fs``
(not a project dependency: ``pip install s3fs`` into a scratch environment).

Usage: ``python bench/object_clients.py [--big 16] [--big-mb 8] [--small 300] [--ranges 300]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid


def start_server(python: str) -> tuple[subprocess.Popen | None, str]:
    """moto's S3 server on a free loopback port, in its own session; returns it and its endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.2)
    return proc, endpoint


def make_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10).close()
    return name


def bench_obstore(bucket: str, args: argparse.Namespace, big: bytes, small: bytes) -> dict:
    import obstore
    from obstore.store import from_url

    store = from_url(f"s3://{bucket}/obstore", client_options={"allow_http": True})
    out = {}
    start = time.perf_counter()
    for i in range(args.big):
        obstore.put(store, f"big/{i}", big)
    out["big_put_mb_s"] = args.big * len(big) / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.big):
        assert len(obstore.get(store, f"big/{i}").bytes()) == len(big)
    out["big_get_mb_s"] = args.big * len(big) / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.small):
        obstore.put(store, f"small/{i}", small)
    out["small_put_per_s"] = args.small / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.small):
        obstore.get(store, f"small/{i}").bytes()
    out["small_get_per_s"] = args.small / (time.perf_counter() - start)
    offsets = _offsets(args, len(big))
    start = time.perf_counter()
    for offset in offsets:
        obstore.get_range(store, "big/0", start=offset, length=65536)
    out["range_get_per_s"] = len(offsets) / (time.perf_counter() - start)
    return out


def bench_s3fs(bucket: str, args: argparse.Namespace, big: bytes, small: bytes) -> dict:
    import s3fs

    fs = s3fs.S3FileSystem(anon=False)
    base = f"{bucket}/s3fs"
    out = {}
    start = time.perf_counter()
    for i in range(args.big):
        fs.pipe_file(f"{base}/big/{i}", big)
    out["big_put_mb_s"] = args.big * len(big) / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.big):
        assert len(fs.cat_file(f"{base}/big/{i}")) == len(big)
    out["big_get_mb_s"] = args.big * len(big) / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.small):
        fs.pipe_file(f"{base}/small/{i}", small)
    out["small_put_per_s"] = args.small / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.small):
        fs.cat_file(f"{base}/small/{i}")
    out["small_get_per_s"] = args.small / (time.perf_counter() - start)
    offsets = _offsets(args, len(big))
    start = time.perf_counter()
    for offset in offsets:
        fs.cat_file(f"{base}/big/0", start=offset, end=offset + 65536)
    out["range_get_per_s"] = len(offsets) / (time.perf_counter() - start)
    return out


def _offsets(args: argparse.Namespace, size: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(0, size - 65536) for _ in range(args.ranges)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", type=int, default=16)
    parser.add_argument("--big-mb", type=float, default=8.0)
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--ranges", type=int, default=300)
    parser.add_argument("--server-python", default=sys.executable)
    args = parser.parse_args()
    proc = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        proc, endpoint = start_server(args.server_python)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    try:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        big = os.urandom(int(args.big_mb * 1e6))
        small = os.urandom(4096)
        result: dict = {"bench": "object_clients", "endpoint": "local moto server",
                        "big_objects": args.big, "big_mb": args.big_mb, "small_objects": args.small,
                        "ranges": args.ranges}
        for name, fn in (("obstore", bench_obstore), ("s3fs", bench_s3fs)):
            try:
                result[name] = {k: round(v, 1) for k, v in fn(make_bucket(endpoint), args, big, small).items()}
            except ImportError as err:
                result[name] = f"not installed ({err.name})"
        print(json.dumps(result))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
