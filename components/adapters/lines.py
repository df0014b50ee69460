"""A model line: one model continually trained drop after drop, with its state on disk.

`$AMR_HOME/lines/<name>/` holds
  state.json        the commit point (`LineState`): drops trained (in order), memory version of each, the current
                    model directory, the sampler state carried to the next refresh, the arms' reference losses,
                    the loss matrix (with a `(base)` first row for a line that continues a pretrained model),
                    a history row per drop, each drop's refresh phase (`DropProgress`), a pending data-rollback
                    note, and the line's origin (the `train.model` it started from)
  states/<drop>.json  the state before <drop> was trained (what `rewind` and `amr rollback` restore)
  models/<drop>/    the weights after training <drop> (safetensors + config.json); the newest two are kept
  checkpoints/<drop>/  in-progress checkpoints of the drop being trained (removed once it is committed)
  eval/             loss matrix JSON/CSV/heatmap of the latest evaluation

`state.json` is replaced atomically and written last, so a crash at any point leaves the previous state, and
an unfinished drop resumes from its checkpoints. It is validated on load (components.adapters.linestate, whose
names are re-exported here): a corrupted or hand-edited file fails with its path, the field and the fix, and
nothing is written. The refresh flow uses the line `main`; the forgetting
benchmark uses one line per strategy.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from components.adapters.linestate import PHASES, DropProgress, LineState, LineStateError, Phase
from components.core.files import write_json_atomic
from components.core.metrics import LossMatrix

__all__ = ["KEEP_MODELS", "NAME", "PHASES", "DropProgress", "Line", "LineState", "LineStateError", "Phase"]

KEEP_MODELS = 2
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Line:
    def __init__(self, home: Path, name: str = "main"):
        if not NAME.fullmatch(name):
            raise ValueError(f"line name {name!r}: use letters, digits, '.', '_' or '-'")
        self.name = name
        self.root = Path(home) / "lines" / name
        self.state = self._read()

    def _read(self) -> LineState:
        path = self.root / "state.json"
        return LineState.load(path) if path.exists() else LineState()

    def save(self) -> None:
        write_json_atomic(self.root / "state.json", self.state.model_dump())

    @property
    def trained(self) -> list[str]:
        return list(self.state.trained)

    @property
    def model_dir(self) -> Path | None:
        return self.root / self.state.model if self.state.model else None

    def checkpoints(self, drop_id: str) -> Path:
        return self.root / "checkpoints" / drop_id

    @property
    def matrix(self) -> LossMatrix:
        data = self.state.loss_matrix
        return LossMatrix.from_dict(data) if data else LossMatrix()

    def reload(self) -> None:
        """Read the state again (after another process, e.g. a torchrun rank, committed)."""
        self.state = self._read()

    def snapshot_before(self, drop_id: str) -> LineState | None:
        """The state saved just before `drop_id` was trained, if it is still on disk (without the progress of
        `drop_id` itself, so the drop restarts from `planned` with a new run when it is trained again)."""
        path = self.root / "states" / f"{drop_id}.json"
        return LineState.load(path).only_trained_progress() if path.exists() else None

    # ---- the refresh state machine of each drop (components.refresh.steps) ---------------------------------------

    def progress(self, drop_id: str) -> DropProgress:
        return self.state.progress.get(drop_id) or DropProgress()

    def in_flight(self) -> list[str]:
        """Drops whose refresh started and did not reach `gated`, oldest first (the next refresh finishes them)."""
        return [d for d, p in self.state.progress.items() if p.phase != "gated"]

    def advance(self, drop_id: str, phase: Phase, **fields: Any) -> DropProgress:
        """Record that `drop_id` reached `phase` (with its run id, version, decision...), durably, at once.

        Never moves a drop backwards: recording a phase it has passed only fills in the fields."""
        current = self.progress(drop_id)
        target = phase if not current.reached(phase) else current.phase
        updated = DropProgress.model_validate(current.model_dump() | fields | {"phase": target})
        self.state.progress = {**self.state.progress, drop_id: updated}
        self.save()
        return updated

    def commit_training(
        self,
        drop_id: str,
        version: int,
        write_model: Callable[[Path], None],
        sampler_state: Mapping[str, Any] | None,
        record: Mapping[str, Any],
        origin: str | None = None,
    ) -> None:
        """Publish the trained weights (`write_model` fills a directory), then the state that points at them.

        `origin` (the `train.model` the first drop started from) is recorded once, by the line's first commit."""
        final = self.root / "models" / drop_id
        write_json_atomic(self.root / "states" / f"{drop_id}.json", self.state.model_dump())
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{drop_id}-", dir=self.root / "models"))
        write_model(tmp)
        if final.exists():  # a previous attempt died after publishing but before state.json: redo it
            shutil.rmtree(final)
        tmp.replace(final)
        state = self.state.model_copy(deep=True)
        state.progress[drop_id] = self.progress(drop_id).model_copy(update={"phase": "trained"})
        state.trained.append(drop_id)
        state.versions[drop_id] = version
        state.model = final.relative_to(self.root).as_posix()
        if sampler_state is not None:
            state.sampler = dict(sampler_state)
        state.history.append(dict(record))
        state.origin = state.origin or origin
        previous = self.state.model
        self.state = LineState.model_validate(state.model_dump())
        self.save()
        shutil.rmtree(self.checkpoints(drop_id), ignore_errors=True)
        for old in self.state.trained[:-KEEP_MODELS]:
            if f"models/{old}" != previous:  # the model this one started from: a fallback if this one diverged
                shutil.rmtree(self.root / "models" / old, ignore_errors=True)

    def finish_gate(self, drop_id: str, decision: Literal["promoted", "rejected"], healthy: bool) -> None:
        """Record the gate's decision as the drop's last phase, in one write with the model the line goes on from.

        Policy: the line continues from its own latest model, promoted or not (the gate decides what is served,
        not what the next refresh starts from), unless that model diverged (`healthy` false: a non-finite loss,
        or one above the uniform guess). Then the line falls back to the model the drop started from (None:
        the next drop starts from a fresh model), so one diverged run does not poison every later one."""
        state = self.state.model_copy(deep=True)
        state.progress[drop_id] = self.progress(drop_id).model_copy(
            update={"phase": "gated", "decision": decision, "healthy": healthy}
        )
        if not healthy:
            before = self.snapshot_before(drop_id)
            start = before.model if before is not None else None
            if start is not None and not (self.root / start).exists():
                raise ValueError(f"line {self.name}: the model {drop_id} started from ({start}) is gone")
            state.model = start
        self.state = LineState.model_validate(state.model_dump())
        self.save()

    def trained_record(self, drop_id: str) -> dict[str, Any]:
        """The history row `commit_training` wrote for `drop_id` (the last one, if it was trained twice)."""
        rows = [row for row in self.state.history if row.get("drop_id") == drop_id]
        if not rows:
            raise ValueError(f"line {self.name} has no training record of drop {drop_id}")
        return rows[-1]

    def rewind(self) -> str:
        """Undo the last trained drop (for `refresh --force`): its state before, its model gone; returns its id."""
        if not self.trained:
            raise ValueError(f"line {self.name} has trained nothing; nothing to rewind")
        last = self.trained[-1]
        before = self.snapshot_before(last)
        if before is None:
            raise ValueError(f"line {self.name}: no state saved before {last}; cannot rewind it")
        if before.model and not (self.root / before.model).exists():
            raise ValueError(f"line {self.name}: the model before {last} was pruned; rewind is limited to one drop")
        self.state = before
        self.save()
        shutil.rmtree(self.root / "models" / last, ignore_errors=True)
        return last

    def commit_evaluation(self, matrix: LossMatrix, arm_ref: Mapping[str, float]) -> None:
        """Store the matrix and the arms' probe losses; `arm_ref_best` keeps each arm's lowest finite one ever."""
        self.state.loss_matrix = matrix.to_dict()
        self.state.arm_ref = dict(arm_ref)
        best = dict(self.state.arm_ref_best)
        for key, loss in arm_ref.items():
            if math.isfinite(loss) and not best.get(key, math.inf) <= loss:
                best[key] = float(loss)
        self.state.arm_ref_best = best
        self.save()

    def arm_reference(self, mode: Literal["best", "last"]) -> dict[str, float]:
        """The sampler's reference per arm (`replay.reference`); `best` falls back to `last` for unseen arms
        (a state written before `arm_ref_best` existed)."""
        return self.state.arm_ref | self.state.arm_ref_best if mode == "best" else dict(self.state.arm_ref)

    # ---- the data-rollback hand-off: `amr rollback` marks the line, the next refresh's run records it ----------

    def mark_rolled_back(self, note: str, state: LineState | None = None) -> None:
        """Record a data rollback (optionally replacing the state: the line rewound), saved at once."""
        self.state = (state or self.state).model_copy(update={"rolled_back_to": note})
        self.save()

    @property
    def rollback_note(self) -> str | None:
        """The data rollback the next MLflow run of this line must record, if any."""
        return self.state.rolled_back_to

    def clear_rollback_note(self) -> None:
        """Called once a run has recorded the note, so that only one run does."""
        if self.state.rolled_back_to is not None:
            self.state.rolled_back_to = None
            self.save()
