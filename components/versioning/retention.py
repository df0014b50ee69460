"""Retention: `amr memory cleanup` removes the LanceDB versions nothing can need and compacts the drops log.

Kept whatever their age, each with its reasons in the report:
  * tagged versions: every drop commit (`drop-<id>`, `superseded-<v>-<id>`: what `amr rollback` restores, and
    what every lock file in git names) and any tag a person set;
  * versions a registered MLflow model version was trained on (its `amr.memory_version` tag, over every registered
    model of the tracking server: keeping one too many is safe, losing one is not);
  * the memory version readers see, the latest version (writers append to it) and version 1 (the empty table a
    memory with every drop rolled back reads).
Everything else older than `--older-than` days is removed: the restores written by recoveries and rollbacks and the
commits of writers that died before their record, with the data files only they referenced, and data files no
version references (a writer that died before its commit) once they are also older than Lance's 7-day guard.

Cleanup does not compact the sequences table: `amr memory compact` does (components.adapters.compaction), and its
result is tagged `compacted-<v>`, so cleanup keeps it like any tagged version. Drop commits stay too, so a compacted
memory stores its rows twice (the price of rollbacks to any drop commit). The drops log is compacted here (each
record is a tiny fragment of its own), and by the writer past 16 fragments.
Cleanup refuses to start while a refresh runs, and holds the refresh and memory write locks until it is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from components.adapters import registry
from components.adapters.locks import refresh_lock
from components.adapters.memory import Memory
from components.adapters.records import DROPS, INGESTED, SEQUENCES
from components.core.config import Settings

DEFAULT_DAYS = 7.0  # like Lance's own default: a reader that checked out a version a minute ago keeps it


@dataclass
class CleanupReport:
    kept: dict[int, list[str]]  # version -> why it stays
    removed: list[int]
    bytes_removed: int = 0
    log_fragments: tuple[int, int] = (0, 0)  # drops log fragments before, after compaction
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["kept"] = [{"version": v, "reasons": r} for v, r in sorted(self.kept.items())]
        return out


def protected(
    versions: list[dict], drop_commits: Mapping[int, list[str]], models: Mapping[int, list[str]], memory_version: int
) -> dict[int, list[str]]:
    """Why each version must stay, for the versions that must; pure (versions as `Memory.versions()` lists them)."""
    latest = max((v["version"] for v in versions), default=0)
    reasons: dict[int, list[str]] = {}
    for v in versions:
        n = v["version"]
        why = [f"tag {t}" for t in v["tags"]]
        why += [f"drop commit of {d}" for d in drop_commits.get(n, []) if f"tag drop-{d}" not in why]
        why += list(models.get(n, []))
        if n == memory_version:
            why.append("the memory version readers see")
        if n == latest:
            why.append("the latest version (writers append to it)")
        if n == 1:
            why.append("the empty table (read when every drop is rolled back)")
        if why:
            reasons[n] = why
    return reasons


def cleanup(settings: Settings, older_than_days: float = DEFAULT_DAYS, dry_run: bool = False) -> CleanupReport:
    """Remove unprotected versions older than `older_than_days`; see the module docstring for what is kept."""
    memory = Memory.open(settings)
    with refresh_lock(settings.home), memory.writer() as mem:
        versions = mem.versions()
        if not versions:
            return CleanupReport({}, [], dry_run=dry_run, notes=["the memory is empty: nothing to clean up"])
        commits: dict[int, list[str]] = {}
        for rec in mem.records():
            if rec.status == INGESTED:
                commits.setdefault(rec.version, []).append(rec.drop_id)
        keep = protected(versions, commits, registry.memory_versions_in_use(settings), mem.version)
        sequences = mem.db.open_table(SEQUENCES)
        now, age = datetime.now(), timedelta(days=older_than_days)  # Lance's timestamps are local, naive
        old = []
        for v in sequences.list_versions():
            if int(v["version"]) in keep:
                continue
            if now - v["timestamp"] < age:
                keep[int(v["version"])] = [f"newer than {older_than_days:g} days"]
            else:
                old.append(int(v["version"]))
        if dry_run:
            return CleanupReport(keep, old, dry_run=True)
        return _remove(mem, keep, old, age)


def _remove(memory: Memory, keep: dict[int, list[str]], old: list[int], age: timedelta) -> CleanupReport:
    """Delete exactly `old` (Lance still refuses tagged ones), then compact and prune the drops log."""
    sequences = memory.db.open_table(SEQUENCES)
    # With no old version, naming the latest (which Lance never removes) still sweeps the data files no version
    # references: those of a writer that died before its commit (e.g. the Ray engine's uncommitted fragments,
    # components.ingest.engine_ray), once older than `age` and Lance's 7 days for writes that may be in flight.
    latest = max(int(v["version"]) for v in sequences.list_versions())
    stats = sequences.to_lance().cleanup_old_versions(
        older_than=age, versions=old or [latest], error_if_tagged_old_versions=False
    )
    freed = int(stats.bytes_removed)
    left = {int(v["version"]) for v in sequences.list_versions()}
    for v in old:
        if v in left:
            keep[v] = ["Lance kept it (tagged or still referenced)"]
    log = memory.db.open_table(DROPS)
    before = len(log.to_lance().get_fragments())
    log.optimize(cleanup_older_than=age)
    after = len(memory.db.open_table(DROPS).to_lance().get_fragments())
    return CleanupReport(keep, [v for v in old if v not in left], freed, (before, after))
