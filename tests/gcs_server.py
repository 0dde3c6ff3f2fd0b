"""A stand-in for Google Cloud Storage's XML API, for the gs:// tests: written for this project from
GCS's documentation, not Google's server and not a published emulator.

None of the emulators a registry offers answers what object_store's GCS client sends (it speaks the
XML API: ``PUT /<bucket>/<object>`` uploads, XML multipart uploads, ``list-type=2`` listings):
``gcp-storage-emulator`` answers 501, and ``fake-gcs-server`` (a wheel bundles it) refuses an XML
upload with "invalid uploadType". So this server implements exactly those requests, with the
semantics GCS documents for them, and nothing else:

- every write of an object makes a new *generation* (a number that only grows), returned in
  ``x-goog-generation`` with the object's ``ETag`` (quoted MD5 of the bytes; for a multipart upload,
  the MD5 of the parts' MD5s and ``-<parts>``, which is not the content's MD5 on GCS either);
- ``x-goog-if-generation-match: N`` on a write: ``0`` means "only if no object has the name", any
  other value "only if the live object's generation is N"; otherwise ``412 PreconditionFailed``. This
  is GCS's only conditional write: an ``If-Match`` on an entity tag is not honoured for uploads;
- ``GET``/``HEAD`` with ``Range`` (206, or 416 past the end), ``If-Match``/``If-None-Match`` on the
  entity tag, and ``?generation=`` (only the live generation exists: a bucket without versioning);
- ``DELETE`` of an object (404 ``NoSuchKey`` when absent), ``PUT /<bucket>`` to create a bucket, and
  404 ``NoSuchBucket`` for any request to a bucket that does not exist;
- listings by prefix, delimiter, ``start-after``, ``max-keys`` (at most 1000) and continuation
  token, in lexicographic key order, each entry with its ``Generation``;
- multipart uploads (``POST ?uploads``, ``PUT ?partNumber&uploadId``, ``POST ?uploadId`` to
  complete, ``DELETE ?uploadId`` to abort); every part but the last must be at least 5 MiB.

Credentials are not checked (object_store sends an empty bearer token to an emulator). Copies
(``x-goog-copy-source``), object metadata, ACLs and the JSON API are not implemented: they answer 501.
Run as ``python gcs_server.py --port N``; the state lives in memory.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import itertools
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

PROLOG = "<?xml version='1.0' encoding='UTF-8'?>"
XML = {"Content-Type": "application/xml; charset=UTF-8"}
STALE = "At least one of the pre-conditions you specified did not hold."
MIN_PART = 5 * 2**20
PAGE = 1000
GENERATION = itertools.count(int(time.time() * 1e6))  # GCS generations are microsecond timestamps


@dataclass
class Blob:
    data: bytes
    etag: str
    generation: int
    modified: float


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, Blob]] = {}
        # upload id -> (bucket, key, part number -> (bytes, etag))
        self.uploads: dict[str, tuple[str, str, dict[int, tuple[bytes, str]]]] = {}


def _error(status: int, code: str, message: str) -> tuple[int, dict, bytes]:
    body = f"{PROLOG}<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return status, XML, body.encode()


def _xml(body: str) -> tuple[int, dict, bytes]:
    return 200, XML, (PROLOG + body).encode()


def _quoted_md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _meta(blob: Blob) -> dict:
    return {"ETag": blob.etag, "x-goog-generation": str(blob.generation), "x-goog-metageneration": "1",
            "x-goog-stored-content-length": str(len(blob.data)),
            "Last-Modified": email.utils.formatdate(blob.modified, usegmt=True),
            "Content-Type": "application/octet-stream"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as object_store's client expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    state: State

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _route(self) -> tuple[str, str, dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return urllib.parse.unquote(bucket), urllib.parse.unquote(key), query

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, reply: tuple[int, dict, bytes], head: bool = False) -> None:
        status, headers, body = reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if not head and status != 204:
            self.wfile.write(body)

    def _handle(self, method: str) -> None:
        body = self._body()
        bucket, key, query = self._route()
        with self.state.lock:
            reply = self._dispatch(method, bucket, key, query, body)
        self._send(reply, head=method == "HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _dispatch(self, method: str, bucket: str, key: str, query: dict,
                  body: bytes) -> tuple[int, dict, bytes]:
        st = self.state
        if not bucket:
            return _error(501, "NotImplemented", "listing buckets is not implemented")
        if method == "PUT" and not key:
            if bucket in st.buckets:
                return _error(409, "BucketAlreadyOwnedByYou", "You already own this bucket.")
            st.buckets[bucket] = {}
            return 200, {}, b""
        if bucket not in st.buckets:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist.")
        objects = st.buckets[bucket]
        if not key:
            if method == "GET" and query.get("list-type") == "2":
                return self._list(bucket, objects, query)
            return _error(501, "NotImplemented", f"{method} on a bucket is not implemented")
        if "uploadId" in query or "uploads" in query:
            return self._multipart(method, bucket, key, query, body)
        if method in ("GET", "HEAD"):
            return self._get(objects.get(key), query)
        if method == "PUT":
            if "x-goog-copy-source" in self.headers:
                return _error(501, "NotImplemented", "copies are not implemented")
            return self._write(objects, key, body, _quoted_md5(body))
        if method == "DELETE":
            if objects.pop(key, None) is None:
                return _error(404, "NoSuchKey", "The specified key does not exist.")
            return 204, {}, b""
        return _error(501, "NotImplemented", f"{method} on an object is not implemented")

    def _write(self, objects: dict[str, Blob], key: str, data: bytes, etag: str) -> tuple[int, dict, bytes]:
        match = self.headers.get("x-goog-if-generation-match")
        if match is not None:
            live = objects.get(key)
            if (live.generation if live is not None else 0) != int(match):
                return _error(412, "PreconditionFailed", STALE)
        blob = Blob(data, etag, next(GENERATION), time.time())
        objects[key] = blob
        headers = _meta(blob)
        del headers["Last-Modified"], headers["Content-Type"]
        headers["x-goog-hash"] = "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode()
        return 200, headers, b""

    def _get(self, blob: Blob | None, query: dict) -> tuple[int, dict, bytes]:
        if blob is None or ("generation" in query and query["generation"] != str(blob.generation)):
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        if self.headers.get("If-Match") not in (None, "*", blob.etag):
            return _error(412, "PreconditionFailed", STALE)
        if self.headers.get("If-None-Match") in ("*", blob.etag):
            return 304, {"ETag": blob.etag}, b""
        ranges = self.headers.get("Range")
        if not ranges:
            return 200, _meta(blob), blob.data
        first, _, last = ranges.removeprefix("bytes=").partition("-")
        size = len(blob.data)
        start, end = (max(size - int(last), 0), size - 1) if not first else \
            (int(first), min(int(last), size - 1) if last else size - 1)
        if start >= size or start > end:
            return 416, {"Content-Range": f"bytes */{size}"}, b""
        headers = {**_meta(blob), "Content-Range": f"bytes {start}-{end}/{size}"}
        return 206, headers, blob.data[start:end + 1]

    def _list(self, bucket: str, objects: dict[str, Blob], query: dict) -> tuple[int, dict, bytes]:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        after = query.get("continuation-token")
        after = base64.urlsafe_b64decode(after).decode() if after else query.get("start-after", "")
        limit = min(int(query.get("max-keys") or PAGE), PAGE)
        entries: list[str] = []
        prefixes: list[str] = []
        last, truncated = "", False
        for key in sorted(objects, key=lambda k: k.encode()):
            if not key.startswith(prefix) or key.encode() <= after.encode():
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common in prefixes or common.encode() <= after.encode():
                    continue
                item, name = f"<CommonPrefixes><Prefix>{escape(common)}</Prefix></CommonPrefixes>", common
                prefixes.append(common)
            else:
                blob = objects[key]
                millis = int(blob.modified * 1000) % 1000
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(blob.modified)) + f".{millis:03d}Z"
                item, name = (f"<Contents><Key>{escape(key)}</Key><Generation>{blob.generation}</Generation>"
                              f"<MetaGeneration>1</MetaGeneration><LastModified>{stamp}</LastModified>"
                              f"<ETag>{escape(blob.etag)}</ETag><Size>{len(blob.data)}</Size></Contents>"), key
            if len(entries) == limit:
                truncated = True
                break
            entries.append(item)
            last = name
        resume = base64.urlsafe_b64encode(last.encode()).decode()
        token = f"<NextContinuationToken>{resume}</NextContinuationToken>" if truncated else ""
        return _xml(f"<ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>"
                    f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
                    f"<KeyCount>{len(entries)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
                    f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{''.join(entries)}{token}"
                    "</ListBucketResult>")

    def _multipart(self, method: str, bucket: str, key: str, query: dict,
                   body: bytes) -> tuple[int, dict, bytes]:
        st = self.state
        if method == "POST" and "uploads" in query:
            upload = uuid.uuid4().hex
            st.uploads[upload] = (bucket, key, {})
            return _xml(f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                        f"<Key>{escape(key)}</Key>"
                        f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>")
        upload = query.get("uploadId", "")
        if st.uploads.get(upload, ("", "", None))[:2] != (bucket, key):
            return _error(404, "NoSuchUpload", "The requested upload was not found.")
        parts = st.uploads[upload][2]
        if method == "PUT":
            etag = _quoted_md5(body)
            parts[int(query["partNumber"])] = (body, etag)
            return 200, {"ETag": etag}, b""
        if method == "DELETE":
            del st.uploads[upload]
            return 204, {}, b""
        if method != "POST":
            return _error(501, "NotImplemented", f"{method} on an upload is not implemented")
        listed = [(int(p.findtext("PartNumber")), p.findtext("ETag")) for p in ET.fromstring(body).iter("Part")]
        if not listed or [n for n, _ in listed] != sorted({n for n, _ in listed}) or \
                any(n not in parts or parts[n][1] != tag for n, tag in listed):
            return _error(400, "InvalidPart", "One or more of the specified parts could not be found.")
        if any(len(parts[n][0]) < MIN_PART for n, _ in listed[:-1]):
            return _error(400, "EntityTooSmall", "A part but the last is smaller than 5 MiB.")
        data = b"".join(parts[n][0] for n, _ in listed)
        digest = hashlib.md5(b"".join(bytes.fromhex(parts[n][1].strip('"')) for n, _ in listed)).hexdigest()
        status, headers, _ = self._write(st.buckets[bucket], key, data, f'"{digest}-{len(listed)}"')
        if status != 200:
            return status, headers, _
        del st.uploads[upload]
        status, _, body = _xml(f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                               f"<Key>{escape(key)}</Key><ETag>{escape(headers['ETag'])}</ETag>"
                               "</CompleteMultipartUploadResult>")
        return status, {**XML, "x-goog-generation": headers["x-goog-generation"]}, body


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """A server on ``host:port`` with empty state (call ``serve_forever`` on it)."""
    handler = type("GCSHandler", (Handler,), {"state": State()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.host, args.port).serve_forever()
