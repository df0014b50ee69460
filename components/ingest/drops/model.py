"""The data types of drops: references, manifest, documents, issues and a read drop's contents."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from components.core.ids import FIX_DROP_ID, is_drop_id

READY = "_READY"
MANIFEST = "_drop.json"
MAX_ISSUES_PER_FILE = 5
MAX_MESSAGE_ISSUES = 20
FIX_ESCAPE = "keep every file inside the drop directory (no '..', absolute paths, backslashes or symlinks out of it)"


@dataclass(frozen=True)
class DropRef:
    drop_id: str
    ready: bool  # _READY present: the producer has finished writing
    location: str  # "/data/drops/d1" or "s3://bucket/prefix/d1", for messages


class DropManifest(BaseModel):
    """`_drop.json`: optional facts about the drop, recorded with it in the memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_id: str | None = None
    description: str = ""
    source: str = ""  # free text: where the data came from
    license: str = ""
    created_at: datetime | None = None
    tags: list[str] = []

    @field_validator("drop_id")
    @classmethod
    def _matches_directory(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A manifest copied from another drop would silently mislabel the data, so its id must agree.
        expected = (info.context or {}).get("drop_id")
        if value is not None and expected is not None and value != expected:
            raise ValueError(f"is {value!r} but the drop directory is {expected!r}")
        return value


@dataclass(frozen=True)
class Document:
    text: str
    file: str  # relative to the drop, e.g. "part-0.jsonl" or "sub/a.txt"
    line: int | None  # 1-based JSONL line or parquet row; None for a text file


@dataclass(frozen=True)
class DropIssue:
    file: str  # relative name; "" for a problem of the whole drop
    line: int | None
    reason: str
    fix: str
    drop_id: str = ""  # filled in by read_drop, which knows it

    def __str__(self) -> str:
        where = "/".join(part for part in (self.drop_id, self.file) if part) or "<drop>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.reason.rstrip('.')}. Fix: {self.fix}"


@dataclass
class DropContents:
    drop_id: str
    documents: list[Document]
    content_hash: str  # sha256 over sorted (relative name, sha256(bytes)) of the files read, see read_drop
    n_bytes: int
    manifest: DropManifest | None
    issues: list[DropIssue] = field(default_factory=list)  # empty means valid

    @property
    def ok(self) -> bool:
        return not self.issues

    def error_message(self) -> str:
        """Every issue on its own line (the first MAX_MESSAGE_ISSUES of them); '' for a valid drop."""
        lines = [str(issue) for issue in self.issues[:MAX_MESSAGE_ISSUES]]
        if len(self.issues) > MAX_MESSAGE_ISSUES:
            lines.append(f"... and {len(self.issues) - MAX_MESSAGE_ISSUES} more")
        return "\n".join(lines)


class FileIssues(list[DropIssue]):
    """The issues of one file; parsers stop reading the file once it is `full`."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def add(self, line: int | None, reason: str, fix: str) -> None:
        self.append(DropIssue(self.file, line, reason, fix))

    @property
    def full(self) -> bool:
        return len(self) >= MAX_ISSUES_PER_FILE

    def stop(self, unchecked: str) -> None:
        """Say that checking stopped, so the producer knows more problems may follow ("line 9 on", "row 9 on")."""
        reason = f"stopped after {MAX_ISSUES_PER_FILE} issues; {unchecked} not checked"
        self.add(None, reason, "fix the issues above and check the rest of the file")


def unsafe_name_reason(name: str) -> str | None:
    """Why `name` (relative to its drop) could reach outside the drop or be ambiguous; None if it is safe."""
    if "\\" in name:
        return "backslash in the name"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "control character in the name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk's surrogate escapes for bytes that are not UTF-8
        return "the name is not valid UTF-8"
    parts = name.split("/")
    if ".." in parts:
        return "'..' segment escapes the drop"
    if "" in parts or "." in parts:
        return "empty or '.' path segment"
    return None


def check_drop_id(drop_id: str) -> str:
    """Sources refuse ids that are not plain names, so no id can address another directory or prefix."""
    if not is_drop_id(drop_id):
        raise ValueError(f"invalid drop id {drop_id!r}: {FIX_DROP_ID}")
    return drop_id
