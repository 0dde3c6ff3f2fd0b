"""Objects under one root: a local folder or an object-store prefix (s3://, gs://, az://), one interface.

Everything the project keeps (feature stores, manifests, targets, runs) can live on object storage,
where there is no rename, no lock and no append. So the few operations used are the ones every store
offers: whole-object put and get, ranged get, list, delete, and a conditional put (create only if
absent; replace only if unchanged), which is what commit markers and leases are built from.

``obstore`` (Rust ``object_store``) is the client for URLs, built by ``object_clients`` from each
cloud's standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), never from our own flags; ``check()`` probes a root once
without retries so a wrong URL or bad credentials fail at once with one line naming the URL.

An object's entity tag is the token callers hold for a conditional replace, whatever the cloud: the
one a put, a HEAD and a listing give agree. GCS replaces conditionally on a *generation* instead,
which its listings do not carry, so there ``put_replace`` looks the generation up (see there).

Local folders are plain files: writes go through a temporary name and a rename, a conditional
create is a hard link (atomic, fails if the name exists), a conditional replace holds an ``fcntl``
lock on a side file.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.fork_guard import runtime_pid
from alarm.pipeline.object_clients import RETRY, SCHEMES, cloud, connect, probe
from alarm.pipeline.object_errors import CREDENTIALS_HINT, one_line

URL_SCHEMES = tuple(SCHEMES)


class PreconditionFailed(RuntimeError):
    """A conditional put lost: the object exists (create) or changed since it was read (replace)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the root, size in bytes, entity tag, modification time (epoch s)."""

    key: str
    size: int
    etag: str
    modified: float


def is_url(location: str | os.PathLike) -> bool:
    """True for an object-store URL (``s3://...``), False for a local path (``file://`` counts as local)."""
    text = str(location)
    return "://" in text and text.split("://", 1)[0].lower() in URL_SCHEMES


def join(location: str | os.PathLike, *keys: str) -> str:
    """``location`` with ``keys`` appended, with ``/`` for URLs and the OS rule for paths."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *(k.strip("/") for k in keys if k)])
    return str(Path(location, *keys))


class Objects(Protocol):
    """Objects under one root, addressed by ``/``-separated keys relative to it."""

    url: str
    local: Path | None  # the folder when the root is local, else None

    def get(self, key: str) -> bytes: ...
    def get_range(self, key: str, start: int, end: int) -> bytes: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def exists(self, key: str) -> bool: ...
    def put(self, key: str, data: bytes) -> str: ...
    def put_new(self, key: str, data: bytes) -> str | None: ...
    def put_replace(self, key: str, data: bytes, etag: str) -> str: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def list_dirs(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def child(self, prefix: str) -> Objects: ...
    def check(self) -> None: ...


def open_objects(location: str | os.PathLike) -> Objects:
    """The objects under ``location``: a local folder (created on first write) or an object-store URL."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_url(text):
        return RemoteObjects(text)
    return LocalObjects(Path(text))


def text_of(objects: Objects, key: str) -> str | None:
    """An object's text, or None when it does not exist."""
    try:
        return objects.get(key).decode()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------- local


class LocalObjects:
    """Objects as files under a folder; every write is atomic (temporary name, then rename or link)."""

    def __init__(self, root: Path) -> None:
        self.local = Path(root)
        self.url = str(self.local)

    def _path(self, key: str) -> Path:
        return self.local / key if key else self.local

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._path(key), "rb") as handle:
            return os.pread(handle.fileno(), end - start, start)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, _local_etag(st), st.st_mtime)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._tmp(path)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return _local_etag(path.stat())

    def put_new(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        tmp = self._tmp(path)
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # atomic, and refuses an existing name: a conditional create
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return _local_etag(path.stat())

    def put_replace(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.cas"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # compare and swap under one lock
            info = self.head(key)
            if info is None or info.etag != etag:
                raise PreconditionFailed(f"{path} changed since it was read")
            return self.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        tmp = self._tmp(target)
        try:
            os.link(path, tmp)  # same file system: no copy
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get_file(self, key: str, path: Path) -> None:
        import shutil

        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [self.head(prefix)]
        if not base.is_dir():
            return []
        out = []
        for path in sorted(base.rglob("*")):
            if path.is_file() and not (path.name.startswith(".") and path.name.endswith((".tmp", ".cas"))):
                st = path.stat()
                out.append(ObjectInfo(path.relative_to(self.local).as_posix(), st.st_size, _local_etag(st),
                                      st.st_mtime))
        return out

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        import shutil

        base = self._path(prefix)
        count = len(self.list(prefix))
        if base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
        elif base.is_file():
            base.unlink(missing_ok=True)
        return count

    def child(self, prefix: str) -> LocalObjects:
        return LocalObjects(self._path(prefix))

    def check(self) -> None:
        if self.local.exists() and not self.local.is_dir():
            raise ConfigError(f"{self.local} is a file, not a folder")


def _local_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


# --------------------------------------------------------------------------------------------- remote


class RemoteObjects:
    """Objects under an object-store prefix, through obstore, with bounded retries and backoff."""

    def __init__(self, url: str, retry: dict | None = None) -> None:
        self.url, self.local = url.rstrip("/"), None
        self._retry = RETRY if retry is None else retry
        self._pid = runtime_pid(self.url)
        self._cloud = cloud(self.url)
        self._azure = self._cloud == "azure"
        self._client = connect(self.url, self._retry)

    def __reduce__(self) -> tuple:  # Ray ships these to workers: rebuild the client there
        return (RemoteObjects, (self.url, self._retry))

    @property
    def _store(self) -> Any:
        return self._client if self._pid == os.getpid() else runtime_pid(self.url)  # raises in a fork

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import obstore.exceptions as oe

        try:
            return fn(self._store, key, *args, **kwargs)
        except (oe.NotFoundError, FileNotFoundError):
            raise FileNotFoundError(f"{self.url}/{key}") from None
        except (oe.AlreadyExistsError, oe.PreconditionError, FileExistsError) as err:
            raise PreconditionFailed(f"{self.url}/{key}: {one_line(err)}") from None
        except (oe.PermissionDeniedError, oe.UnauthenticatedError) as err:
            raise ConfigError(f"{self.url}: access denied on {what} of {key} ({one_line(err)}); "
                              f"{CREDENTIALS_HINT}") from None

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(self._call("get", key, obstore.get).bytes())

    def get_range(self, key: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(self._call("get", key, obstore.get_range, start=start, end=end))

    def head(self, key: str) -> ObjectInfo | None:
        import obstore

        try:
            meta = self._call("head", key, obstore.head)
        except FileNotFoundError:
            return None
        return _info(meta, key)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def put(self, key: str, data: bytes) -> str:
        import obstore

        return self._call("put", key, obstore.put, data)["e_tag"] or ""

    def put_new(self, key: str, data: bytes) -> str | None:
        import obstore

        try:
            return self._call("put", key, obstore.put, data, mode="create")["e_tag"] or ""
        except PreconditionFailed:
            return None

    def put_replace(self, key: str, data: bytes, etag: str) -> str:
        import obstore

        mode = self._generation_match(key, etag) if self._cloud == "gcs" else {"e_tag": etag}
        return self._call("put", key, obstore.put, data, mode=mode)["e_tag"] or ""

    def _generation_match(self, key: str, etag: str) -> dict:
        """GCS's form of "replace only if unchanged": the live generation, if its tag is ``etag``.

        object_store sends GCS's only conditional write, ``x-goog-if-generation-match``, and refuses an
        update that names no generation; listings carry none. So the tag the caller holds is checked
        against a HEAD here, and the server refuses the put if anything replaced that generation since.
        (The tag is the content's MD5, as on S3: a rewrite with the very same bytes passes either check.)
        """
        import obstore

        try:
            meta = self._call("head", key, obstore.head)
        except FileNotFoundError:
            raise PreconditionFailed(f"{self.url}/{key}: no such object to replace") from None
        if _info(meta, key).etag != etag or not meta.get("version"):
            raise PreconditionFailed(f"{self.url}/{key} changed since it was read")
        return {"e_tag": etag, "version": meta["version"]}

    def put_file(self, key: str, path: Path) -> None:
        import obstore

        self._call("put", key, obstore.put, Path(path))  # multipart above obstore's chunk size

    def get_file(self, key: str, path: Path) -> None:
        import obstore

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as handle:
            for block in self._call("get", key, obstore.get).stream():
                handle.write(block)
        os.replace(tmp, path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        import obstore

        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out: list[ObjectInfo] = []
        for batch in self._iter_list(obstore.list(self._store, prefix=prefix or None)):
            out.extend(_info(meta, quote=self._azure) for meta in batch)
        return sorted(out, key=lambda info: info.key)

    def _iter_list(self, stream: Any) -> Iterator[Any]:
        import obstore.exceptions as oe

        try:
            yield from stream
        except (oe.PermissionDeniedError, oe.UnauthenticatedError) as err:
            raise ConfigError(f"{self.url}: access denied on list ({one_line(err)}); {CREDENTIALS_HINT}") from None

    def list_dirs(self, prefix: str = "") -> list[str]:
        import obstore

        prefix = prefix.rstrip("/") + "/" if prefix else ""
        result = self._call("list", prefix, obstore.list_with_delimiter) if prefix else \
            obstore.list_with_delimiter(self._store)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in result["common_prefixes"])

    def delete(self, key: str) -> None:
        import obstore

        try:
            self._call("delete", key, obstore.delete)
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> int:
        import obstore

        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            obstore.delete(self._store, keys[start:start + 1000])
        return len(keys)

    def child(self, prefix: str) -> RemoteObjects:
        return RemoteObjects(join(self.url, prefix), self._retry)

    def check(self) -> None:
        """List the root once with no retries: an unreachable endpoint, a missing bucket or bad
        credentials raise ``ConfigError`` naming the URL within seconds."""
        probe(self.url)


def _info(meta: dict, key: str | None = None, quote: bool = False) -> ObjectInfo:
    modified, etag = meta.get("last_modified"), str(meta.get("e_tag") or "")
    if quote and etag and not etag.startswith(('"', 'W/"')):  # Azure lists tags bare, HEAD and PUT quote
        etag = f'"{etag}"'  # them (S3 quotes in all three): one object, one tag, whichever call saw it
    return ObjectInfo(key if key is not None else meta["path"], int(meta["size"]),
                      etag, modified.timestamp() if modified is not None else 0.0)
