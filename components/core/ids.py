"""Names that become LanceDB tags, file names and S3 prefixes: one rule for drop ids, wherever they are checked.

A drop id becomes the tags `drop-<id>` and `superseded-<v>-<id>`, so it must also pass Lance's ref name check
(lance/dataset/refs: only alphanumerics, '.', '-', '_'; no '..'; not ending in '.' or '.lock'; checked by trying
`table.tags.create` on a real table with lance 14). An id that passed here but failed there used to fail at tag
creation after its rows were appended, leaving an orphan table version on every later ingest; now it is refused
before anything is read or written. '.lock' is matched as Lance does, case-sensitively.
"""

from __future__ import annotations

import re

DROP_ID_PATTERN = re.compile(r"(?!.*\.\.)(?!.*\.\Z)(?!.*\.lock\Z)[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIX_DROP_ID = (
    "name the drop with 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..' and "
    "not ending in '.' or '.lock'"
)


def is_drop_id(name: str) -> bool:
    """Whole-string match (a trailing newline does not pass)."""
    return DROP_ID_PATTERN.fullmatch(name) is not None


def drop_id_problem(name: str) -> str | None:
    """Why `name` is not a drop id, in a few words; None if it is one."""
    if is_drop_id(name):
        return None
    if not name:
        return "it is empty"
    if len(name) > 128:
        return f"it has {len(name)} characters (at most 128)"
    if not name[0].isascii() or not name[0].isalnum():
        return "it does not start with a letter or digit"
    if bad := sorted({ch for ch in name if not (ch.isascii() and (ch.isalnum() or ch in "._-"))}):
        return f"it contains {', '.join(repr(ch) for ch in bad)}"
    if ".." in name:
        return "it contains '..'"
    return "it ends in '.lock'" if name.endswith(".lock") else "it ends in '.'"
