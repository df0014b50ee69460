"""The gate step of one refresh: judge the drop's model version against a baseline, move the aliases (or record
the no) and finish the drop's run. The decision itself is components.evaluation.gate's pure `decide`; this module
finds what it is judged against (`gate_step` says which baseline and why) and acts on it through the registry
adapter. components.refresh.steps re-exports `gate_step` and `GateOutcome` beside the other steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from components.adapters import registry
from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.metrics import BASE_ROW
from components.evaluation import Evaluation, measure
from components.evaluation.gate import Candidate, Champion, Decision, decide
from components.training.model import load_model


def best_ever(line: Line) -> dict[str, float]:
    """Each past drop's lowest held-out loss after training, before the latest evaluation (never the base row)."""
    m = line.matrix
    earlier = m.values[[i for i, row in enumerate(m.rows[:-1]) if row != BASE_ROW]]
    out = {}
    for j, drop in enumerate(m.drops):
        column = earlier[:, j][np.isfinite(earlier[:, j])]
        if column.size:
            out[drop] = float(column.min())
    return out


def _baseline(settings: Settings, line: Line, client, name: str, champion_mv, version: str) -> Champion | None:
    """What the candidate is judged against (see `gate_step`), with its losses on the line's held-out data."""
    base = line.matrix.base
    if champion_mv is None and base:
        origin = line.state.origin or settings.train.model
        return Champion(origin.rstrip("/").rsplit("/", 1)[-1], {d: base.get(d, math.nan) for d in line.trained}, "base")
    baseline_mv = champion_mv or registry.previous_candidate(client, name, version)
    if baseline_mv is None:
        return None
    weights = registry.load_weights(f"models:/{name}/{baseline_mv.version}")
    memory = Memory.open(settings)
    losses = measure(load_model(weights), memory, memory.version, line.trained, settings).losses
    return Champion(str(baseline_mv.version), losses, "champion" if champion_mv is not None else "previous")


@dataclass
class GateOutcome:
    version: str
    decision: Decision
    champion_before: str | None


def gate_step(settings: Settings, line: Line, drop_id: str, ev: Evaluation, version: str, run_id: str) -> GateOutcome:
    """Re-evaluate the baseline on the same held-out data, decide, move the aliases (or record the no), finish.

    The baseline is the champion; with none yet, the base model of a line that continues a pretrained model (its
    `(base)` row: what the line started from is what a first champion must beat), else the newest version a gate
    judged before (so a first champion is still compared with something whenever something exists); with none of
    them, the first-champion rule. On a rerun after a kill that came after the aliases moved, the champion is this
    very version: the baseline is then the `previous` alias it replaced (or, for a first champion, the base again),
    so the decision is derived again from what it was first derived from."""
    registry.configure(settings)
    client, name = registry.client(), settings.mlflow.registered_model
    champion_mv = registry.champion_version(client, name)
    if champion_mv is not None and str(champion_mv.version) == version:
        champion_mv = registry.previous_version(client, name)
    baseline = _baseline(settings, line, client, name, champion_mv, version)
    candidate = Candidate(drop_id, ev.drop_losses, best_ever(line), ev.nonfinite, ev.uniform_loss)
    decision = decide(candidate, baseline, settings.gate)
    registry.apply_decision(client, name, version, decision)
    registry.log_record(
        run_id,
        tags={"amr.gate": "promoted" if decision.promote else "rejected"},
        texts={
            "gate/report.md": decision.to_markdown(),
            "gate/rows.json": json.dumps(decision.rows, default=str, indent=2),
        },
    )
    registry.finish_run(run_id)
    line.finish_gate(drop_id, "promoted" if decision.promote else "rejected", ev.healthy)
    return GateOutcome(version, decision, str(champion_mv.version) if champion_mv else None)
