"""Names that become LanceDB tags, file names and S3 prefixes: one rule for drop ids, wherever they are checked."""

from __future__ import annotations

import re

DROP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIX_DROP_ID = "name the drop with 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_drop_id(name: str) -> bool:
    """Whole-string match (a trailing newline does not pass)."""
    return DROP_ID_PATTERN.fullmatch(name) is not None
