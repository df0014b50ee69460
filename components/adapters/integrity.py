"""Reading a memory's Lance data files end to end, for `Memory.verify` (`amr memory --verify`).

Why values are checked: Lance data files carry no checksums. A missing file or a damaged page header fails to
decode and is reported as such, but 4 KB of garbage in the middle of a page decodes fine into token ids of
+-2^31 (which later failed evaluation with an IndexError). So every row must also be one amr writes: a live drop,
split train/holdout, 1 <= length <= context_length, tokens inside the vocabulary and padding after `length`, a
cluster of its drop; and each live drop must have exactly its recorded row count. Garbage that still decodes to
such values is caught only by the row hashes of `memory.lock.json` (`amr memory --verify` compares them too).

Every failure is a `CorruptData` whose message starts with the data file(s) it concerns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

FIX_CORRUPT = (
    "restore the memory from a backup (the whole directory or prefix), or re-ingest the drops into a new memory.uri; "
    "`amr rollback` helps only to a commit from before the drop whose file is damaged"
)


class CorruptData(RuntimeError):
    """A data file is missing, cannot be decoded or holds rows amr never writes; the message starts with it."""


def short_error(exc: BaseException, limit: int = 400) -> str:
    """A LanceDB / object-store error as one line: its first line, without the Rust source location, cut short."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text.split(", /home/runner/")[0]  # "Not found: ...lance, /home/runner/work/lance/.../local.rs:273:40"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_all(dataset, check: Callable[[pa.Table, list[str]], str | None] = lambda rows, paths: None) -> None:
    """Decode every data file of every fragment; a failure, or a problem `check(rows, paths)` returns, names them."""
    base = dataset.uri.rstrip("/") + "/data/"
    for fragment in dataset.get_fragments():
        paths = [base + f.path for f in fragment.data_files()]
        try:
            rows = fragment.to_table()
        except Exception as exc:  # Lance raises OSError, ArrowInvalid, RuntimeError... for a damaged file
            raise CorruptData(f"{', '.join(paths)}: cannot be read ({short_error(exc)})") from None
        if problem := check(rows, paths):
            raise CorruptData(f"{', '.join(paths)}: {problem}")


def check_sequences(dataset, meta: dict[str, Any], live: list) -> dict[str, tuple[int, list[str]]]:
    """Check every row of the sequences table at the memory version; each live drop's rows and data files."""
    clusters = {r.drop_id: r.clusters for r in live}
    counts: Counter[str] = Counter()
    files: dict[str, list[str]] = {}

    def check(rows: pa.Table, paths: list[str]) -> str | None:
        for drop, n in Counter(rows.column("drop_id").to_pylist()).items():
            counts[drop] += n
            files.setdefault(drop, []).extend(paths)
        return row_problem(rows, meta, clusters)

    read_all(dataset, check)
    expected = {r.drop_id: r.sequences + r.holdout_sequences for r in live}
    wrong = sorted(d for d in set(counts) | set(expected) if counts.get(d, 0) != expected.get(d, 0))
    if wrong:
        where = ", ".join(sorted({f for d in wrong for f in files.get(d, [])})) or dataset.uri
        detail = ", ".join(f"{d}: {counts.get(d, 0)} rows, recorded {expected.get(d, 0)}" for d in wrong)
        raise CorruptData(f"{where}: the memory version has the wrong rows ({detail})")
    return {d: (counts[d], files[d]) for d in counts}


def row_problem(rows: pa.Table, meta: dict[str, Any], clusters: dict[str, int]) -> str | None:
    """Why `rows` cannot be rows amr wrote for the live drops (drop id -> cluster count); None if they can."""
    if rows.num_rows == 0:
        return None
    width = int(meta["context_length"])
    drops = rows.column("drop_id").to_pylist()
    if unknown := sorted(set(drops) - set(clusters)):
        return f"rows of drops that are not live: {unknown[:3]}"
    if not set(rows.column("split").to_pylist()) <= {"train", "holdout"}:
        return "a split other than train / holdout"
    lengths = rows.column("length").to_numpy()
    if lengths.min() < 1 or lengths.max() > width:
        return f"a length outside 1..{width}"
    tokens = rows.column("tokens").combine_chunks().flatten().to_numpy().reshape(-1, width)
    if tokens.min() < 0 or tokens.max() >= int(meta["vocab_size"]):
        return f"token ids outside 0..{int(meta['vocab_size']) - 1}"
    if (tokens[np.arange(width)[None, :] >= lengths[:, None]] != int(meta["pad_id"])).any():
        return "non-padding tokens after a row's length"
    limit = np.array([clusters[d] for d in drops])
    cluster, position = rows.column("cluster").to_numpy(), rows.column("position").to_numpy()
    if (cluster < 0).any() or (cluster >= limit).any() or (position < 0).any():
        return "a cluster or position outside its drop's range"
    return None
