"""Drops on local disk: every kind of bad input becomes an issue naming file and line; good drops read back exactly."""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.ingest.drops import (
    MAX_ISSUES_PER_FILE,
    DropIssue,
    LocalSource,
    S3Source,
    UnsafeNameError,
    open_source,
    read_drop,
    unsafe_name_reason,
)

PYLIB = Path(os.__file__).parent
LICENSES = Path("/usr/share/common-licenses")
LIMIT = 100_000


def py_text(name: str) -> str:
    return (PYLIB / name).read_text(encoding="utf-8")


def license_text(name: str) -> str:
    return (LICENSES / name).read_text(encoding="utf-8")


def jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def parquet(column: list | pa.Array, name: str = "text") -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({name: column}), buf)
    return buf.getvalue()


@dataclass(frozen=True)
class Link:
    target: str  # symlink target, relative to the link's directory or absolute


class Fifo:
    pass


def write_drop(root: Path, files: dict[str, bytes | str | Link | Fifo], drop_id: str = "d1", ready: bool = True):
    drop = root / drop_id
    drop.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = drop / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            path.symlink_to(content.target)
        elif isinstance(content, Fifo):
            os.mkfifo(path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    if ready:
        (drop / "_READY").write_bytes(b"")
    return drop


def read(root: Path, drop_id: str = "d1", limit: int = LIMIT, progress=None):
    return read_drop(LocalSource(root), drop_id, limit, progress)


GOOD = {"ok.txt": license_text("BSD")}  # keeps a bad drop from also being "empty"
SHLEX = py_text("shlex.py")
with_bad_byte = SHLEX.encode().split(b"\n")
with_bad_byte[6] += b"\xff"  # line 7
GZIPPED = gzip.compress(jsonl(SHLEX), mtime=0)
ZSTDED = zstandard.ZstdCompressor().compress(jsonl(SHLEX, py_text("getopt.py")))
MANIFEST_SYNTAX = b'{\n  "description": "shlex"\n  "source": "stdlib"\n}\n'  # missing comma: error on line 3

# name: (files, the one issue's file and line, a substring of its reason), read with max_document_bytes=20_000
BAD_CASES = {
    "invalid-json": ({"a.jsonl": jsonl(SHLEX, "x") + b'{"text": "a" "b"}\n'}, "a.jsonl", 3, "invalid JSON: Expecting"),
    "json-not-object": ({"a.jsonl": jsonl(SHLEX) + b'["text"]\n'}, "a.jsonl", 2, "an array, not a JSON object"),
    "json-missing-text": ({"a.jsonl": b'{"body": "x"}\n' + jsonl(SHLEX)}, "a.jsonl", 1, 'missing field "text"'),
    "json-text-number": ({"a.jsonl": jsonl(SHLEX) + b'{"text": 42}\n'}, "a.jsonl", 2, "a number, not a string"),
    "json-text-null": ({"a.jsonl": b'{"text": null}\n'}, "a.jsonl", 1, '"text" is null'),
    "json-surrogate": ({"a.jsonl": b'{"text": "ok"}\n{"text": "\\ud800"}\n'}, "a.jsonl", 2, "surrogate"),
    "json-deep-nesting": ({"a.jsonl": b"[" * 5_000 + b"\n"}, "a.jsonl", 1, "invalid JSON"),
    "json-bad-utf8": ({"a.jsonl": jsonl(SHLEX) + b'{"text": "caf\xe9"}\n'}, "a.jsonl", 2, "invalid UTF-8"),
    "json-binary": ({"a.jsonl": parquet([SHLEX])}, "a.jsonl", 1, "binary data"),
    "gzip-cut-off": ({"a.jsonl.gz": GZIPPED[: len(GZIPPED) // 2]}, "a.jsonl.gz", None, "damaged gzip data"),
    "zstd-cut-off": ({"a.ndjson.zst": ZSTDED[:-40]}, "a.ndjson.zst", None, "zstd frame (file cut off)"),
    "gzip-text-too-big": (
        {"GPL-3.gz": gzip.compress(license_text("GPL-3").encode())},
        "GPL-3.gz",
        None,
        "decompressed",
    ),
    "gzip-line-too-big": ({"a.json.gz": gzip.compress(jsonl("ok", license_text("GPL-3")))}, "a.json.gz", 2, "35,"),
    "gzip-parquet": ({"a.parquet.gz": gzip.compress(parquet([SHLEX]))}, "a.parquet.gz", None, "compressed parquet"),
    "gzip-nul": ({"a.jsonl.gz": gzip.compress(b'{"text": "ok"}\n\0\0\n')}, "a.jsonl.gz", 2, "binary data"),
    "gzip-blank": ({"a.jsonl.gz": gzip.compress(b"\n\n")}, "a.jsonl.gz", None, "no JSON lines"),
    "text-bad-utf8": ({"shlex.py": b"\n".join(with_bad_byte)}, "shlex.py", 7, "invalid UTF-8 (byte 0xff)"),
    "text-nul": ({"a.txt": b"first\nsecond\nthi\0rd\n"}, "a.txt", 3, "binary data"),
    "text-empty": ({"a.txt": b""}, "a.txt", None, "empty file"),
    "text-whitespace": ({"a.txt": b" \n\t\n"}, "a.txt", None, "only whitespace"),
    "jsonl-empty": ({"a.jsonl": b""}, "a.jsonl", None, "empty file"),
    "jsonl-blank-lines": ({"a.jsonl": b"\n  \n\r\n"}, "a.jsonl", None, "only blank lines"),
    "parquet-empty": ({"a.parquet": b""}, "a.parquet", None, "empty file"),
    "parquet-no-rows": ({"a.parquet": parquet(pa.array([], pa.string()))}, "a.parquet", None, "no rows"),
    "drop-only-manifest": ({"_drop.json": b"{}"}, "", None, "empty drop"),
    "drop-only-ignored": ({".DS_Store": b"\0\1", "_SUCCESS": b""}, "", None, "empty drop"),
    "jsonl-too-big": ({"a.jsonl": jsonl("short", license_text("GPL-3"))}, "a.jsonl", 2, "over max_document_bytes"),
    "parquet-too-big": (
        {"a.parquet": parquet(["a", "b", license_text("GPL-3")])},
        "a.parquet",
        3,
        "over max_document_bytes",
    ),
    "text-too-big": ({"GPL-3": license_text("GPL-3")}, "GPL-3", None, "the file is 35,149 bytes"),
    "symlink-absolute-out": ({"link.txt": Link(str(LICENSES / "GPL-3"))}, "link.txt", None, "outside the drop"),
    "symlink-relative-out": ({"sub/link.txt": Link("../../d0/secret.txt")}, "sub/link.txt", None, "outside the drop"),
    "symlink-dir-out": ({"lic": Link(str(LICENSES))}, "lic", None, "outside the drop"),
    "symlink-dir-in": ({"sub/a.txt": SHLEX, "alias": Link("sub")}, "alias", None, "not a regular file"),
    "fifo": ({"pipe.txt": Fifo()}, "pipe.txt", None, "not a regular file"),
    "backslash-name": ({"..\\..\\x.txt": SHLEX}, "..\\..\\x.txt", None, "backslash"),
    "not-parquet": ({"a.parquet": license_text("BSD")}, "a.parquet", None, "unreadable parquet"),
    "parquet-truncated": ({"a.parquet": parquet([SHLEX])[:-9]}, "a.parquet", None, "unreadable parquet"),
    "parquet-no-text": ({"a.parquet": parquet([SHLEX], name="body")}, "a.parquet", None, 'no column "text"'),
    "parquet-null": ({"a.parquet": parquet([SHLEX, None, "x"])}, "a.parquet", 2, 'null in column "text"'),
    "parquet-int": ({"a.parquet": parquet([1, 2])}, "a.parquet", None, "type int64, not string"),
    "manifest-syntax": ({"_drop.json": MANIFEST_SYNTAX}, "_drop.json", 3, "invalid JSON: Expecting ','"),
    "manifest-extra": ({"_drop.json": b'{"colour": "red"}'}, "_drop.json", None, 'field "colour": Extra inputs'),
    "manifest-tags": ({"_drop.json": b'{"tags": "python"}'}, "_drop.json", None, 'field "tags": Input should be'),
    "manifest-date": ({"_drop.json": b'{"created_at": "soon"}'}, "_drop.json", None, 'field "created_at"'),
    "manifest-id": ({"_drop.json": b'{"drop_id": "d9"}'}, "_drop.json", None, "'d9' but the drop directory is 'd1'"),
    "manifest-list": ({"_drop.json": b"[]"}, "_drop.json", None, "valid dictionary"),
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_input_is_one_issue_naming_file_and_line(tmp_path, case):
    files, file, line, reason = case
    write_drop(tmp_path, {"secret.txt": "another drop's data"}, drop_id="d0")
    write_drop(tmp_path, files | ({} if file == "" else GOOD))
    contents = read(tmp_path, limit=20_000)
    assert contents.ok is False
    assert [(i.file, i.line) for i in contents.issues] == [(file, line)], contents.error_message()
    issue = contents.issues[0]
    assert reason in issue.reason
    assert issue.fix and issue.drop_id == "d1"
    location = "/".join(p for p in ("d1", file) if p) + (f":{line}" if line is not None else "")
    assert str(issue).startswith(f"{location}: {issue.reason}. Fix: ")


def test_good_drop_of_all_three_formats_reads_back_every_document(tmp_path):
    modules = [py_text(n) for n in ("shlex.py", "getopt.py", "fnmatch.py")]
    licenses = [license_text(n) for n in ("Apache-2.0", "BSD", "MPL-2.0")]
    lines = jsonl(*modules).split(b"\n")
    crlf_and_blank = lines[0] + b"\r\n\n" + b"\n".join(lines[1:])  # a CRLF ending and a blank line 2
    manifest = {"drop_id": "d1", "source": "python stdlib", "created_at": "2024-05-01T12:00:00Z", "tags": ["code"]}
    files = {
        "modules.jsonl": crlf_and_blank,
        "licenses.parquet": parquet(licenses),
        "texts/GPL-1.txt": license_text("GPL-1"),
        "texts/bom.txt": b"\xef\xbb\xbf" + b"caf\xc3\xa9 \xe2\x80\x93 \xc3\x85str\xc3\xb6m\n",
        "_drop.json": json.dumps(manifest),
        "_SUCCESS": b"",  # ignored, like every other name starting with '_' or '.'
        ".DS_Store": b"\0\0\1binary",
        "texts/.hidden/x.bin": b"\0",
    }
    write_drop(tmp_path, files)
    contents = read(tmp_path)

    assert contents.ok, contents.error_message()
    assert contents.error_message() == ""
    got = [(d.file, d.line, d.text) for d in contents.documents]
    assert got == [
        ("licenses.parquet", 1, licenses[0]),
        ("licenses.parquet", 2, licenses[1]),
        ("licenses.parquet", 3, licenses[2]),
        ("modules.jsonl", 1, modules[0]),
        ("modules.jsonl", 3, modules[1]),  # line numbers count the skipped blank line
        ("modules.jsonl", 4, modules[2]),
        ("texts/GPL-1.txt", None, license_text("GPL-1")),  # kept as written, trailing newline included
        ("texts/bom.txt", None, "café – Åström\n"),  # only the byte-order mark is dropped
    ]
    assert contents.manifest is not None and contents.manifest.source == "python stdlib"
    assert contents.manifest.created_at.year == 2024 and contents.manifest.tags == ["code"]
    read_names = ["_drop.json", "licenses.parquet", "modules.jsonl", "texts/GPL-1.txt", "texts/bom.txt"]
    assert contents.n_bytes == sum((tmp_path / "d1" / n).stat().st_size for n in read_names)


def test_spark_ndjson_and_compressed_json_lines_read_as_documents(tmp_path):
    """Issue 11: these were ingested as raw JSON text (tokens `{"text": "...`) or rejected as binary data."""
    modules = [py_text(n) for n in ("shlex.py", "getopt.py", "fnmatch.py", "heapq.py", "bisect.py", "glob.py")]
    zstd = zstandard.ZstdCompressor()
    files = {  # what Spark's df.write.json() writes, with and without compression, and the other usual names
        "part-00000-1b2c.c000.json": jsonl(modules[0]),
        "part-00001-1b2c.c000.json.gz": gzip.compress(jsonl(modules[1]), mtime=0),
        ".part-00000-1b2c.c000.json.crc": b"crc\0",
        "_SUCCESS": b"",
        "b.ndjson": jsonl(modules[2]),
        "c.jsonl.zst": zstd.compress(jsonl(modules[3])) + zstd.compress(jsonl(modules[4])),  # two frames
        "d.jsonl": gzip.compress(jsonl(modules[5]), mtime=0),  # gzip named .jsonl: recognised by its magic bytes
        "spark/part-00002": jsonl("no suffix: JSON lines by content"),
        "notes.txt.gz": gzip.compress(license_text("BSD").encode(), mtime=0),
        "brace.txt": '{"config": 1}\nnot JSON lines: no field "text"\n',
    }
    write_drop(tmp_path, files)
    contents = read(tmp_path)
    assert contents.ok, contents.error_message()
    got = {(d.file, d.line): d.text for d in contents.documents}
    assert got == {
        ("b.ndjson", 1): modules[2],
        ("brace.txt", None): files["brace.txt"],
        ("c.jsonl.zst", 1): modules[3],
        ("c.jsonl.zst", 2): modules[4],
        ("d.jsonl", 1): modules[5],
        ("notes.txt.gz", None): license_text("BSD"),
        ("part-00000-1b2c.c000.json", 1): modules[0],
        ("part-00001-1b2c.c000.json.gz", 1): modules[1],
        ("spark/part-00002", 1): "no suffix: JSON lines by content",
    }
    assert not any(text.startswith('{"text"') for text in got.values())


def test_a_long_compressed_line_is_skipped_without_holding_it(tmp_path):
    big = license_text("GPL-3") * 30  # ~1 MB on one line, over the limit
    data = gzip.compress(jsonl(py_text("shlex.py"), big, py_text("getopt.py")), mtime=0)
    write_drop(tmp_path, {"a.jsonl.gz": data})
    contents = read(tmp_path, limit=LIMIT)
    assert [(i.line, "over max_document_bytes" in i.reason) for i in contents.issues] == [(2, True)]
    assert f"{len(json.dumps({'text': big})):,} bytes" in contents.issues[0].reason
    assert [d.line for d in contents.documents] == [1, 3]


def test_symlink_inside_the_drop_is_followed(tmp_path):
    write_drop(tmp_path, {"real/shlex.py": py_text("shlex.py"), "alias.py": Link("real/shlex.py")})
    contents = read(tmp_path)
    assert contents.ok, contents.error_message()
    assert [(d.file, d.text) for d in contents.documents] == [
        ("alias.py", py_text("shlex.py")),
        ("real/shlex.py", py_text("shlex.py")),
    ]


def test_progress_reports_every_byte_read(tmp_path):
    write_drop(tmp_path, {"a.jsonl": jsonl(py_text("getopt.py")), "b.txt": license_text("BSD"), "_drop.json": "{}"})
    seen: list[int] = []
    contents = read(tmp_path, progress=seen.append)
    assert contents.ok
    assert sorted(seen) == sorted([len(jsonl(py_text("getopt.py"))), len(license_text("BSD")), 2])
    assert sum(seen) == contents.n_bytes


def test_content_hash_is_stable_and_tracks_every_byte_of_data_and_manifest(tmp_path):
    drop = write_drop(tmp_path, {"a.jsonl": jsonl(py_text("getopt.py")), "_drop.json": '{"source": "stdlib"}'})
    first = read(tmp_path).content_hash
    assert read(tmp_path).content_hash == first
    (drop / "_READY").write_text("written again by a retrying producer")
    (drop / ".DS_Store").write_bytes(b"\0")
    assert read(tmp_path).content_hash == first  # neither the marker nor ignored files are data

    data = bytearray((drop / "a.jsonl").read_bytes())
    data[100] ^= 0x01  # one bit of one byte
    (drop / "a.jsonl").write_bytes(bytes(data))
    changed = read(tmp_path).content_hash
    assert changed != first
    (drop / "_drop.json").write_text('{"source": "stdlib 3.11"}')
    assert read(tmp_path).content_hash not in (first, changed)


def test_content_hash_depends_on_file_names(tmp_path):
    write_drop(tmp_path, {"a.txt": license_text("BSD")}, drop_id="d1")
    write_drop(tmp_path, {"b.txt": license_text("BSD")}, drop_id="d2")
    assert read(tmp_path, "d1").content_hash != read(tmp_path, "d2").content_hash


def test_list_drops_sorted_with_pending_ones_not_ready(tmp_path):
    write_drop(tmp_path, {"a.txt": "x"}, drop_id="2024-02")
    write_drop(tmp_path, {"a.txt": "x"}, drop_id="2024-01")
    write_drop(tmp_path, {"a.txt": "x"}, drop_id="2024-03", ready=False)
    write_drop(tmp_path, {"a.txt": "x"}, drop_id="_staging")
    write_drop(tmp_path, {"a.txt": "x"}, drop_id=".tmp")
    (tmp_path / "notes.txt").write_text("a file at the root is no drop")
    refs = LocalSource(tmp_path).list_drops()
    assert [(r.drop_id, r.ready) for r in refs] == [("2024-01", True), ("2024-02", True), ("2024-03", False)]
    assert refs[0].location == str(tmp_path / "2024-01")


def test_list_drops_of_a_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LocalSource(tmp_path / "nope").list_drops()


def test_reading_stops_after_five_issues_per_file_but_goes_on_with_other_files(tmp_path):
    bad_lines = b"".join(b'{"text": %d}\n' % i for i in range(9))
    write_drop(tmp_path, {"a.jsonl": bad_lines, "b.txt": b"", "c.txt": license_text("BSD")})
    contents = read(tmp_path)
    a = [i for i in contents.issues if i.file == "a.jsonl"]
    assert [i.line for i in a] == [1, 2, 3, 4, 5, None]
    assert len(a) == MAX_ISSUES_PER_FILE + 1
    assert "line 6 and later not checked" in a[-1].reason
    assert [(i.file, i.line) for i in contents.issues if i.file != "a.jsonl"] == [("b.txt", None)]
    assert [d.file for d in contents.documents] == ["c.txt"]


def test_error_message_lists_twenty_issues_then_counts_the_rest(tmp_path):
    write_drop(tmp_path, {f"empty-{i:02d}.txt": b"" for i in range(25)})
    contents = read(tmp_path)
    lines = contents.error_message().split("\n")
    assert len(contents.issues) == 25 and len(lines) == 21
    assert lines[0] == "d1/empty-00.txt: empty file. Fix: remove the empty file or put documents in it"
    assert lines[19].startswith("d1/empty-19.txt: ")
    assert lines[20] == "... and 5 more"


def test_issue_str_for_a_drop_level_problem():
    issue = DropIssue("", None, "empty drop: no document files.", "add files", drop_id="d7")
    assert str(issue) == "d7: empty drop: no document files. Fix: add files"


class DictSource:
    """An in-memory DropSource holding names no local filesystem can: the protocol's contract under test."""

    location = "memory://"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[str] = []

    def list_drops(self):
        return []

    def list_files(self, drop_id: str) -> list[str]:
        return sorted(self.files)

    def opener(self, drop_id: str, name: str):
        self.reads.append(name)
        data = self.files[name]
        return (lambda: io.BytesIO(data)), len(data)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../d2/secret.txt", "'..' segment"),
        ("sub/../../x.txt", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/win.ini", "absolute path"),
        ("sub//x.txt", "empty or '.' path segment"),
        ("./x.txt", "empty or '.' path segment"),
        ("a\\..\\..\\x.txt", "backslash"),
        ("x\n.txt", "control character"),
    ],
)
def test_names_escaping_the_drop_are_flagged_and_never_read(name, reason):
    source = DictSource({name: b"must not be read", "ok.txt": license_text("BSD").encode()})
    contents = read_drop(source, "d1", LIMIT)
    assert not contents.ok
    assert [(i.file, i.line) for i in contents.issues] == [(name, None)]
    assert reason in contents.issues[0].reason
    assert source.reads == ["ok.txt"]


def test_local_source_refuses_escaping_names_even_when_asked_directly(tmp_path):
    write_drop(tmp_path, {"secret.txt": "another drop's data"}, drop_id="d0")
    write_drop(tmp_path, {"ok.txt": "x", "out.txt": Link("../d0/secret.txt")})
    source = LocalSource(tmp_path)
    with pytest.raises(UnsafeNameError, match="'..' segment"):
        source.opener("d1", "../d0/secret.txt")
    with pytest.raises(UnsafeNameError, match="outside the drop"):
        source.opener("d1", "out.txt")
    with pytest.raises(ValueError, match="invalid drop id"):
        source.list_files("..")


def test_non_utf8_file_name_is_flagged(tmp_path):
    drop = write_drop(tmp_path, GOOD)
    fd = os.open(os.path.join(os.fsencode(drop), b"caf\xe9.txt"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"latin-1 name")
    os.close(fd)
    contents = read(tmp_path)
    assert [i.file for i in contents.issues] == ["caf\udce9.txt"]
    assert "not valid UTF-8" in contents.issues[0].reason


def test_invalid_drop_id_is_an_issue_and_nothing_is_listed(tmp_path):
    source = DictSource({"ok.txt": b"x"})
    contents = read_drop(source, "drop one", LIMIT)
    assert [(i.file, i.line) for i in contents.issues] == [("", None)]
    assert "invalid drop id" in contents.issues[0].reason and source.reads == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [("a.txt", None), ("sub/deeper/a.jsonl", None), ("..", "'..'"), ("a/", "empty"), ("", "empty")],
)
def test_unsafe_name_reason(name, reason):
    got = unsafe_name_reason(name)
    assert (got is None) if reason is None else (reason in got)


def test_open_source_picks_the_backend(tmp_path):
    assert isinstance(open_source(str(tmp_path)), LocalSource)
    source = open_source("s3://bucket/some/prefix/")
    assert isinstance(source, S3Source)
    assert (source.bucket, source.prefix, source.location) == ("bucket", "some/prefix/", "s3://bucket/some/prefix")
    with pytest.raises(ValueError, match="unsupported drop location"):
        open_source("gs://bucket/prefix")


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["alpha", "beta"], pa.large_string()),
        pa.array(["alpha", "beta", "alpha"]).dictionary_encode(),  # how pandas categoricals arrive
        pa.array(["alpha", "beta"], pa.string_view()),
    ],
    ids=["large_string", "dictionary", "string_view"],
)
def test_parquet_string_flavours_are_accepted(tmp_path, column):
    write_drop(tmp_path, {"a.parquet": parquet(column)})
    contents = read(tmp_path)
    assert contents.ok, contents.error_message()
    assert [d.text for d in contents.documents] == column.to_pylist()


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("d1", True),
        ("a.b", True),
        ("x.lock.y", True),
        ("x.Lock", True),  # Lance matches '.lock' case-sensitively
        ("a" * 128, True),
        ("a..b", False),
        ("x.", False),
        ("x.lock", False),
        ("x\n", False),
        (".x", False),
        ("-x", False),
        ("a" * 129, False),
        ("a/b", False),
        ("", False),
    ],
)
def test_drop_id_rule_matches_what_lance_tags_accept(name, ok):
    from components.core.ids import drop_id_problem, is_drop_id

    assert is_drop_id(name) is ok
    assert (drop_id_problem(name) is None) is ok
    contents = read_drop(DictSource({"ok.txt": b"x"}), name, LIMIT)
    assert bool(contents.issues) is not ok


def test_drop_ids_that_pass_are_accepted_by_a_real_lance_table(tmp_path):
    import lancedb

    from components.core.ids import is_drop_id

    table = lancedb.connect(tmp_path).create_table("t", data=pa.table({"a": [1]}))
    for name in ("a.b", "x.lock.y", "x.Lock", "a_b-c", "a" * 128):
        assert is_drop_id(name)
        table.tags.create(f"drop-{name}", 1)
    for name in ("a..b", "x.", "x.lock", "x\n"):
        assert not is_drop_id(name)
        with pytest.raises(Exception, match="Ref"):
            table.tags.create(f"drop-{name}", 1)
