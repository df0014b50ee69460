"""Data rollback: the memory's lock file recorded at every commit, and `amr rollback --to REV`.

`memory.lock.json` (components.adapters.manifest, written by the DVC `ingest` stage, kept in git) records the memory
version, the live drops with their commit versions and source hashes, and a content hash of the memory's rows. It
has no timestamps or paths: the same memory always writes the same bytes. Rolling back to a revision REV
  1. reads REV's lock file and proves, before changing anything, that the memory still holds the recorded version
     with exactly the recorded rows (sha256 over every column of every row, per drop, in a fixed order);
  2. restores the DVC state of REV (dvc.lock, .dvc files, git-tracked outputs), then the drops with `dvc checkout`,
     or `dvc pull` from the remote when the cache lacks them;
  3. makes the recorded drops the live ones (`Memory.set_drops`: records appended, nothing rewritten) and hashes the
     restored table again;
  4. rewinds every model line under AMR_HOME to its last state trained only on restored drops (see `rewind_line`)
     and marks it, so the next refresh trains only on the restored data and its MLflow run is tagged
     `amr.data_rollback`.
Rolling forward is the same command with a newer revision. A refresh and a rollback never overlap (refresh lock).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.adapters import dvcrepo, registry
from components.adapters.lines import Line, LineState
from components.adapters.locks import refresh_lock
from components.adapters.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    ManifestError,
    content_hash,
    drop_digests,
    prove,
)
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.files import atomic_write, write_json_atomic


class RollbackError(ManifestError):
    """The rollback cannot be done or proven; nothing was changed unless the message says otherwise."""


def read_manifest(repo: Path, commit: str, path: str) -> tuple[dict[str, Any], bytes]:
    data = dvcrepo.file_at(repo, commit, path)
    if data is None:
        raise RollbackError(
            f"{commit[:12]} has no {path}: the memory was not recorded there (commit after `dvc repro` ingests)"
        )
    lock = json.loads(data)
    if lock.get("format") != MANIFEST_FORMAT:
        raise RollbackError(
            f"{path} at {commit[:12]} has format {lock.get('format')}, this amr reads {MANIFEST_FORMAT}"
        )
    return lock, data


# ---- model lines -------------------------------------------------------------------------------------------


def _state_after(line: Line, prefix: list[str], settings: Settings) -> tuple[LineState, str]:
    """The line's state after training exactly `prefix`, with its model on disk; else a fresh line."""
    if not prefix:
        return LineState(), "reset to untrained (no restored drop was trained first)"
    state = line.snapshot_before(line.trained[len(prefix)])
    if state is None or state.trained != prefix:
        return LineState(), "reset: no saved state after the restored drops; the next refresh trains them all"
    if state.model and (line.root / state.model).exists():
        return state, f"rewound to after {prefix[-1]}"
    found = registry.line_version_weights(settings, line.name, prefix)
    if found is None:
        return LineState(), f"reset: the model after {prefix[-1]} was pruned and is not in the MLflow registry"
    weights, label = found
    shutil.copytree(weights, line.root / state.model, dirs_exist_ok=True)
    return state, f"rewound to after {prefix[-1]} (model from {label})"


def rewind_line(line: Line, restored: set[str], note: str, settings: Settings) -> str | None:
    """Make the line trained only on restored drops; returns what was done, or None if nothing needed to change.

    The line goes back to its state after the longest prefix of its trained drops that is all restored (the
    weights from `models/`, else from the MLflow registry), or starts over if neither has them. Checkpoints of an
    unfinished drop are dropped: their row ids and replay arms belong to the memory before the rollback.
    """
    shutil.rmtree(line.root / "checkpoints", ignore_errors=True)
    trained = line.trained
    keep = next((i for i, d in enumerate(trained) if d not in restored), len(trained))
    if keep == len(trained):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    write_json_atomic(line.root / "states" / "rollbacks" / f"{stamp}.json", line.state.model_dump())
    state, action = _state_after(line, trained[:keep], settings)
    line.mark_rolled_back(note, state)
    for drop in trained if state.model is None else trained[keep:]:  # weights no state points to any more
        shutil.rmtree(line.root / "models" / drop, ignore_errors=True)
    return action


def rewind_lines(settings: Settings, restored: list[str], note: str, memory_changed: bool) -> dict[str, str]:
    """Every line under AMR_HOME; a line whose drops all stay is only marked (when the memory changed)."""
    root = settings.home / "lines"
    actions: dict[str, str] = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (path / "state.json").is_file():
            continue
        line = Line(settings.home, path.name)
        action = rewind_line(line, set(restored), note, settings)
        if action is None and memory_changed:
            line.mark_rolled_back(note)
            action = "kept (trained only on restored drops)"
        if action:
            actions[line.name] = action
    return actions


# ---- the command -------------------------------------------------------------------------------------------


@dataclass
class RollbackReport:
    rev: str
    commit: str
    version_before: int
    version_after: int
    rows_before: int
    rows_after: int
    content_hash: str
    removed: list[str]  # drops no longer live
    returned: list[str]  # drops live again
    drops: list[str]  # the live drops now, in training order
    files: list[str]  # workspace files rewritten from git
    data: str  # how DVC restored the drops: "checkout" (from the cache) or "pull" (from the remote)
    lines: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(settings: Settings, rev: str, lock_path: Path = Path(MANIFEST_FILE), cwd: Path | None = None):
    """Restore the drops and the memory to what they were at `rev`; see the module docstring."""
    cwd = Path.cwd() if cwd is None else cwd
    repo = dvcrepo.repo_root(cwd)
    commit = dvcrepo.resolve(repo, rev)
    try:
        rel = (cwd / lock_path).resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise RollbackError(f"the lock file {lock_path} is outside the repository {repo}") from None
    target, raw = read_manifest(repo, commit, rel)
    memory = Memory.open(settings)
    before, version_before = memory.live(), memory.version
    prove(memory, target)
    note = f"{rev} ({commit[:12]}, memory version {target['memory_version']})"
    with refresh_lock(settings.home):
        files, how = dvcrepo.restore(repo, commit)
        atomic_write(repo / rel, raw)
        with memory.writer() as mem:
            removed, returned = mem.set_drops({d["drop_id"]: int(d["version"]) for d in target["drops"]}, note)
        after = Memory.open(settings)
        drops = after.ingested()
        if drops != [d["drop_id"] for d in target["drops"]] or (drops and after.version != target["memory_version"]):
            raise RollbackError(f"after the rollback the memory is at {after.version} with {drops}; expected {rel}")
        latest = max(v["version"] for v in after.versions()) if drops else 0  # the table writers append to
        if latest and content_hash(after.meta(), drop_digests(after, latest)) != target["content_hash"]:
            raise RollbackError(f"the restored table (version {latest}) does not hash to {rel} of {commit[:12]}")
        lines = rewind_lines(settings, drops, note, bool(removed or returned))
    return RollbackReport(
        rev=rev,
        commit=commit,
        version_before=version_before,
        version_after=after.version,
        rows_before=sum(r.sequences + r.holdout_sequences for r in before),
        rows_after=int(target["rows"]),
        content_hash=target["content_hash"],
        removed=removed,
        returned=returned,
        drops=drops,
        files=files,
        data=how,
        lines=lines,
    )
