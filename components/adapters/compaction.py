"""Compaction of the sequences table: fewer, bigger fragments, so a replay take stays flat as drops pile up.

Each drop commit writes its own fragments, so after hundreds of drops a take of 64 random rows touches hundreds of
fragments. `compact` (`amr memory compact`, and the refresh once `memory.compact_fragments` small fragments have
piled up) runs Lance `compact_files` on the memory version `v` and tags the result `compacted-<v>`. Nothing else
changes: tags, drop records, MLflow's memory versions and `memory.lock.json` keep naming `v`; readers, recovery and
rollback read `v` through its compaction (`Memory.physical`); row ids are ordinals of the version, which
compaction keeps (components.adapters.memory), so training plans, replay arms and checkpoints stay valid. The
drop commits' own fragments stay (every drop commit is tagged, so a rollback can restore it): compaction stores the
rows a second time, in `memory.compact_rows_per_fragment`-row fragments. A writer killed before the tag leaves an
untagged version that the next writer restores away (components.adapters.commits).

Why big fragments, and why Lance file format 2.1 for new memories (`SEQUENCES_FILE_VERSION`): in format 2.2
(LanceDB 0.40's default) a take decodes whole compressed blocks of the tokens column, so its cost grows with how
far apart the rows are; in 2.1 a take of 64 random rows out of 1e6 in one fragment measured 0.78 ms against 6.7 ms
(`benchmarks/scale.py`). A memory created before keeps the format it has (Lance cannot change it in place).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from components.adapters import documents as doc_index
from components.adapters.records import COMPACTED_PREFIX, SEQUENCES, MemoryStoreError


@dataclass
class CompactReport:
    version: int  # the memory version compacted (0: empty memory)
    compacted: int  # the Lance version holding its rows afterwards (== version: not compacted)
    fragments_before: int
    fragments_after: int
    rows: int
    seconds: float
    note: str
    documents: bool = False  # the document index was compacted too (components.adapters.documents `compact`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def small_fragments(dataset, rows_per_fragment: int) -> int:
    """Fragments holding fewer rows than a compacted one would (read from the manifest: no data file)."""
    return sum(1 for f in dataset.get_fragments() if f.metadata.physical_rows < rows_per_fragment)


def compact(memory, rows_per_fragment: int, min_fragments: int = 2) -> CompactReport:
    """Compact the memory version when it has at least `min_fragments` small fragments, and the document index when
    it has that many fragments or index segments (one per drop each). Call inside writer()."""
    report = _compact_sequences(memory, rows_per_fragment, min_fragments)
    report.documents = memory.version > 1 and doc_index.compact(memory.db, min_fragments)
    return report


def _compact_sequences(memory, rows_per_fragment: int, min_fragments: int) -> CompactReport:
    started, version = time.perf_counter(), memory.version
    if version <= 1:
        return CompactReport(version, version, 0, 0, 0, 0.0, "the memory is empty: nothing to compact")
    table = memory.db.open_table(SEQUENCES)  # after the writer's recovery, its latest version holds `version`
    dataset = table.to_lance()
    before, rows = len(dataset.get_fragments()), dataset.count_rows()
    small = small_fragments(dataset, rows_per_fragment)
    if small < min_fragments:
        note = f"{small} small fragment(s) (fewer than {min_fragments}): nothing to compact"
        return CompactReport(version, memory.physical(version, table), before, before, rows, 0.0, note)
    dataset.optimize.compact_files(target_rows_per_fragment=rows_per_fragment, materialize_deletions=False)
    table = memory.db.open_table(SEQUENCES)
    after = table.to_lance()
    if after.count_rows() != rows:
        raise MemoryStoreError(f"compaction of memory version {version} gave {after.count_rows()} rows, not {rows}")
    tag, tags = f"{COMPACTED_PREFIX}{version}", table.tags.list()
    (table.tags.update if tag in tags else table.tags.create)(tag, int(table.version))  # the commit point
    memory._tables.clear()
    seconds = time.perf_counter() - started
    note = f"{before} fragments -> {len(after.get_fragments())}, tagged {tag}"
    return CompactReport(version, int(table.version), before, len(after.get_fragments()), rows, seconds, note)
