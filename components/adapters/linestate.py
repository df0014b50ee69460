"""A line's state: what `$AMR_HOME/lines/<name>/state.json` holds (`LineState`, with each drop's refresh phase in
`DropProgress`), validated field by field on load, so a corrupted or hand-edited file fails with its path, the
field and the fix. components.adapters.lines reads, changes and writes it (and re-exports these names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.core.ids import is_drop_id
from components.core.metrics import LossMatrix

MODEL_DIR = re.compile(r"models/(?P<drop>[^/]+)")


class LineStateError(ValueError):
    """A line's state file cannot be read or does not hold a valid state; nothing was changed."""


PHASES = ("planned", "run_opened", "trained", "evaluated", "registered", "gated")
Phase = Literal["planned", "run_opened", "trained", "evaluated", "registered", "gated"]


class DropProgress(BaseModel):
    """Where one drop's refresh stands: each phase is saved before the next starts, so a rerun resumes it."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase = "planned"
    run_id: str | None = Field(None, description="the drop's MLflow run, reused by every attempt")
    version: str | None = Field(None, description="the registered model version of the drop's model")
    decision: Literal["promoted", "rejected"] | None = Field(None, description="what the gate decided")
    healthy: bool | None = Field(None, description="every held-out loss finite and below the uniform-guess loss")

    def reached(self, phase: Phase) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)


class LineState(BaseModel):
    """What `state.json` holds; every field is checked on load."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    trained: list[str] = Field(default_factory=list, description="drops trained, in order")
    versions: dict[str, int] = Field(default_factory=dict, description="memory version each drop was trained at")
    model: str | None = Field(None, description="`models/<drop>`: the current weights, relative to the line")
    sampler: dict[str, Any] | None = Field(None, description="replay sampler state carried to the next refresh")
    arm_ref: dict[str, float] = Field(default_factory=dict, description="reference loss per arm (train probe)")
    arm_ref_best: dict[str, float] = Field(
        default_factory=dict, description="lowest reference loss per arm over every evaluation of the line"
    )
    history: list[dict[str, Any]] = Field(default_factory=list, description="training record per drop")
    loss_matrix: dict[str, Any] | None = Field(None, description="L[t][j], as LossMatrix.to_dict() writes it")
    rolled_back_to: str | None = Field(None, description="data rollback not yet recorded on an MLflow run")
    progress: dict[str, DropProgress] = Field(default_factory=dict, description="each drop's refresh phase")
    origin: str | None = Field(None, description="`train.model` of the first drop: a built-in name or the base model")

    @field_validator("trained")
    @classmethod
    def _drop_ids(cls, trained: list[str]) -> list[str]:
        bad = [d for d in trained if not is_drop_id(d)]
        if bad:
            raise ValueError(f"not drop ids: {bad[:3]}")
        if len(set(trained)) != len(trained):
            raise ValueError(f"a drop is listed twice: {trained}")
        return trained

    @field_validator("model")
    @classmethod
    def _model_dir(cls, model: str | None) -> str | None:
        if model is not None and not ((m := MODEL_DIR.fullmatch(model)) and is_drop_id(m["drop"])):
            raise ValueError(f"{model!r} is not of the form models/<drop id> (it must stay inside the line)")
        return model

    @field_validator("loss_matrix")
    @classmethod
    def _matrix(cls, data: dict[str, Any] | None) -> dict[str, Any] | None:
        if data is not None:
            LossMatrix.from_dict(data)  # raises on a malformed matrix
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LineState:
        if set(self.versions) != set(self.trained):
            raise ValueError(f"versions has drops {sorted(self.versions)} but trained lists {self.trained}")
        if self.model is not None and self.model.removeprefix("models/") not in self.trained:
            raise ValueError(f"model {self.model!r} is of a drop the line has not trained")
        behind = [d for d in self.trained if d in self.progress and not self.progress[d].reached("trained")]
        if behind:
            raise ValueError(f"progress of {behind} is before `trained`, but trained lists them")
        return self

    def only_trained_progress(self) -> LineState:
        """This state without the progress of drops it has not trained (what a rewound line restarts cleanly)."""
        return self.model_copy(update={"progress": {d: p for d, p in self.progress.items() if d in self.trained}})

    @classmethod
    def load(cls, path: Path) -> LineState:
        """Read and validate `path`; errors name the file, the line or field, and the fix."""
        fix = (
            f"Fix: restore it from the state saved before the last drop ({path.parent / 'states'}/<drop>.json), or "
            f"move {path.parent} away to train the line again from scratch. Nothing was changed."
        )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LineStateError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}). {fix}") from None
        except UnicodeDecodeError as exc:
            raise LineStateError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). {fix}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"field `{'.'.join(str(p) for p in e['loc']) or '(top level)'}`: {e['msg']}" for e in exc.errors()
            )
            raise LineStateError(f"{path}: invalid line state: {problems}. {fix}") from None
