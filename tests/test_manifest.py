"""The manifest reader against well-formed and hostile manifests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alarm.pipeline.manifest import ManifestError, read_manifest, write_manifest


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(**fields) -> str:
    base = {"id": "a", "audio": "a.wav", "dataset": "d"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def test_reads_valid_rows_and_resolves_paths(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "m.jsonl", [
        row(id="a", audio="clips/a.wav", prompt="What is heard?", metadata={"caption": "rain"}),
        row(id="b", audio="/abs/b.flac", start=1.5, end=3, kind="audio"),
        row(id="c", audio="shards/000.tar#c.flac"),
        row(id="q", audio="q.wav", kind="instruction", prompt="Answer.", context="ctx"),
    ])
    result = read_manifest(manifest)
    assert [i.id for i in result.instances] == ["a", "b", "c", "q"]
    a, b, c, q = result.instances
    assert a.audio == str(tmp_path / "clips" / "a.wav") and a.metadata == {"caption": "rain"}
    assert a.prompt == "What is heard?" and a.kind == "audio" and a.line == 1
    assert b.audio == "/abs/b.flac" and (b.start, b.end) == (1.5, 3.0)
    assert c.audio == f"{tmp_path}/shards/000.tar#c.flac" and c.is_tar_member
    assert q.kind == "instruction" and q.context == "ctx"
    assert result.rejects == [] and result.rejects_path is None
    assert result.summary()["clips"] == 4


def test_hostile_rows_are_rejected_with_line_and_reason(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "m.jsonl", [
        row(id="ok"),
        "{not json",
        "[1, 2, 3]",
        json.dumps({"id": "noaudio", "dataset": "d"}),
        row(id=7),
        row(id="ok"),
        row(id="badkind", kind="video"),
        row(id="cut", start=5, end=5),
        row(id="neg", start=-1),
        row(id="nan", end=float("nan")),
        row(id="meta", metadata=["not", "a", "dict"]),
        row(id="labels", metadata={"labels": "dog"}),
        row(id="seg", metadata={"segments": [{"start": 3, "end": 1, "text": "x"}]}),
        row(id="extra", colour="blue"),
        row(id="instr", kind="instruction"),
        "",
        row(id="fine2", metadata={"segments": [{"start": 0, "end": 1, "text": "hi", "gender": "f"}]}),
    ])
    result = read_manifest(manifest)
    assert [i.id for i in result.instances] == ["ok", "fine2"]
    reasons = {r.line: r.reason for r in result.rejects}
    assert "malformed JSON" in reasons[2]
    assert "JSON object" in reasons[3]
    assert "missing field(s): audio" in reasons[4]
    assert "'id' must be a string" in reasons[5]
    assert "duplicate id (first on line 1)" in reasons[6]
    assert "'kind' must be one of" in reasons[7]
    assert "empty cut" in reasons[8]
    assert "must not be negative" in reasons[9]
    assert "finite number" in reasons[10]
    assert "'metadata' must be an object" in reasons[11]
    assert "labels must be a list" in reasons[12]
    assert "ends before it starts" in reasons[13]
    assert "unknown field(s): colour" in reasons[14]
    assert "needs a 'prompt'" in reasons[15]
    assert len(result.rejects) == 14
    written = [json.loads(x) for x in result.rejects_path.read_text().splitlines()]
    assert result.rejects_path == tmp_path / "m.rejects.jsonl"
    assert [w["line"] for w in written] == sorted(reasons)
    assert written[4] == {"line": 6, "id": "ok", "reason": "duplicate id (first on line 1)"}


def test_missing_empty_and_all_bad_manifests_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="is empty"):
        read_manifest(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(ManifestError, match="no valid row"):
        read_manifest(write_lines(tmp_path / "bad.jsonl", ["{", "{}"]))
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "bin.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="Parquet"):
        read_manifest(tmp_path / "broken.parquet")


def test_gzip_and_parquet_round_trip(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "audio": "a.wav", "dataset": "d", "metadata": {"transcript": "hi"}, "prompt": "p"},
        {"id": "b", "audio": "b.wav", "dataset": "e", "start": 0.5},
    ]
    gz = tmp_path / "m.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    from_gz = read_manifest(gz).instances
    # from_pylist takes its columns from the first row: give every row every column.
    columns = {"id", "audio", "dataset", "metadata", "prompt", "start"}
    table = pa.Table.from_pylist(
        [{**{c: None for c in columns}, **r, "metadata": json.dumps(r.get("metadata", {}))} for r in rows]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    from_parquet = read_manifest(tmp_path / "m.parquet").instances
    assert from_gz == from_parquet
    assert from_gz[0].metadata == {"transcript": "hi"} and from_gz[1].start == 0.5
    out = write_manifest(from_gz, tmp_path / "again.jsonl")
    assert read_manifest(out).instances == from_gz


def test_a_write_that_fails_part_way_keeps_the_old_manifest_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_manifest([{"id": "a", "audio": "a.wav", "dataset": "d"}], tmp_path / "m.jsonl.gz")
    before = gzip.decompress(path.read_bytes())

    def rows():  # a source that breaks after its first row: the rows are streamed to a temporary file
        yield {"id": "b", "audio": "b.wav", "dataset": "d"}
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        write_manifest(rows(), path)
    assert gzip.decompress(path.read_bytes()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl.gz"]


def test_schema_documents_every_field() -> None:
    from alarm.pipeline.manifest import KNOWN

    schema = json.loads((Path(__file__).parents[1] / "manifests" / "schema.json").read_text())
    assert set(schema["properties"]) == KNOWN
    assert set(schema["required"]) == {"id", "audio", "dataset"}


def test_a_byte_order_mark_is_not_row_one_and_a_line_not_in_utf8_is_that_line_s_reject(tmp_path: Path) -> None:
    """Windows editors start a file with a byte-order mark; one Latin-1 line (a name like "café") must
    cost that line, not the whole manifest."""
    lines = [row(id="first"), row(id="second")]
    plain = tmp_path / "bom.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    packed = tmp_path / "bom.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        result = read_manifest(path)
        assert [i.id for i in result.instances] == ["first", "second"] and result.rejects == []

    mixed = tmp_path / "latin1.jsonl"
    latin1 = row(id="caf\xe9").replace("\\u00e9", "\xe9").encode("latin-1")  # {"id": "caf\xe9", ...
    mixed.write_bytes(row(id="ok").encode() + b"\n" + latin1 + b"\n" + row(id="also").encode() + b"\n")
    result = read_manifest(mixed)
    assert [i.id for i in result.instances] == ["ok", "also"]
    assert [(r.line, r.reason) for r in result.rejects] == [(2, "not UTF-8 text: byte 0xe9 at byte 12 of the line")]

    (tmp_path / "wide.jsonl").write_bytes("\n".join(lines).encode("utf-16"))
    with pytest.raises(ManifestError, match="UTF-16 text"):
        read_manifest(tmp_path / "wide.jsonl")
