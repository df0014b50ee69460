"""The steps of one refresh, as plain functions: the Prefect flow (flows/refresh.py) and the CLI wrap them.

For every new drop, in memory order: open an MLflow run (params, lineage tags, the memory version as a dataset
input) -> train with replay, logging step metrics -> evaluate and log the loss matrix and forgetting -> register
the weights as a model version -> gate against the champion and move the aliases (or not). Each step returns a
typed value; `DropReport.build` joins them into the per-drop report the flow returns and the CLI renders.

The line keeps training continually from its own latest model, promoted or not: the gate decides what is
served (`@champion`), not what the next refresh starts from. Every MLflow call goes through the registry adapter,
which re-opens the run by id, so a retried step logs into the same run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel

from components.adapters import locks, registry
from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.plots import plot_arm_probabilities
from components.evaluation import Evaluation, evaluate_line, measure
from components.evaluation.gate import Candidate, Champion, Decision, decide
from components.training.launcher import launch
from components.training.loop import TrainResult, train_drop
from components.training.model import load_model


@contextmanager
def refresh_lock(settings: Settings, wait_seconds: float = 0.0) -> Iterator[None]:
    """One refresh at a time per AMR_HOME: a second one waits `wait_seconds`, then fails naming who holds it."""
    with locks.refresh_lock(settings.home, wait_seconds):
        yield


def drops_to_train(settings: Settings, line: Line, force: bool = False) -> list[str]:
    """Ingested drops the line has not trained on; with `force` and none new, the last drop again (rewound)."""
    todo = [d for d in Memory.open(settings).ingested() if d not in line.trained]
    if not todo and force and line.trained:
        return [line.rewind()]
    return todo


def open_run(settings: Settings, line: Line, drop_id: str) -> str:
    """Create the drop's MLflow run with every parameter and the lineage; returns its id."""
    memory = Memory.open(settings)
    tags = {"amr.line": line.name, "amr.drop": drop_id, "amr.refresh": str(len(line.trained) + 1)}
    if line.rollback_note:
        tags["amr.data_rollback"] = line.rollback_note
    run_id = registry.open_run(settings, f"{line.name}-{drop_id}", tags, memory.version, memory.ingested())
    line.clear_rollback_note()  # recorded on the first run after the rollback (components.versioning.rollback)
    return run_id


def train_step(settings: Settings, line: Line, drop_id: str, run_id: str) -> TrainResult:
    """Train (resuming from the drop's checkpoint after a crash or a retry) and log the run's training record."""
    registry.configure(settings)
    if settings.train.nproc > 1:  # torchrun: rank 0 logs the step metrics into the same run
        result = launch(settings, line, drop_id, run_id=run_id)
    else:
        logger = registry.StepLogger(run_id)
        result = train_drop(settings, Memory.open(settings), line, drop_id, on_step=logger)
        logger.flush()
    artifacts = []
    if result.arm_probabilities:
        path = line.root / "eval" / "arm_probabilities.png"
        plot_arm_probabilities(result.arm_keys, result.arm_probability_steps, result.arm_probabilities, path)
        artifacts.append((path, "sampler"))
    registry.log_record(
        run_id,
        metrics={
            "train/steps": result.steps,
            "train/sequences": result.sequences,
            "train/new_sequences": result.new_sequences,
            "train/replay_sequences": result.replay_sequences,
            "train/wall_seconds": result.wall_seconds,
        },
        tags={"amr.resumed_from_step": str(result.resumed_from_step)},
        dicts={"train/result.json": asdict(result)}
        | ({"sampler/state.json": line.state.sampler} if line.state.sampler else {}),
        artifacts=artifacts,
    )
    return result


def evaluate_step(settings: Settings, line: Line, run_id: str) -> Evaluation:
    registry.configure(settings)
    ev = evaluate_line(settings, Memory.open(settings), line)
    f = ev.forgetting
    metrics = {f"eval/loss/{d}": v for d, v in ev.drop_losses.items()}
    metrics |= {f"eval/forgetting/{d}": v for d, v in f.per_drop.items()}
    metrics |= {
        "eval/forgetting_avg": f.avg,
        "eval/forgetting_max": f.max,
        "eval/rel_forgetting_avg": f.rel_avg,
        "eval/plasticity": f.plasticity,
    }
    registry.log_record(
        run_id, metrics=metrics, step=len(line.trained), artifacts=[(p, "eval") for p in ev.artifacts.values()]
    )
    return ev


def register_step(settings: Settings, line: Line, run_id: str) -> str:
    """Log the line's current weights as a new version of the registered model; returns the version."""
    registry.configure(settings)
    drop = line.trained[-1]
    meta = {
        "line": line.name,
        "drop": drop,
        "drops": line.trained,
        "memory_version": line.state.versions[drop],
        "run_id": run_id,
        "tokenizer": settings.ingest.tokenizer,
    }
    mv = registry.log_model_version(line.model_dir, meta, settings.mlflow.registered_model, run_id=run_id)
    return str(mv.version)


def best_ever(line: Line) -> dict[str, float]:
    """Each past drop's lowest held-out loss before the latest evaluation."""
    m = line.matrix
    if len(m.rows) < 2:
        return {}
    earlier = m.values[:-1]
    out = {}
    for j, drop in enumerate(m.drops):
        column = earlier[:, j][np.isfinite(earlier[:, j])]
        if column.size:
            out[drop] = float(column.min())
    return out


@dataclass
class GateOutcome:
    version: str
    decision: Decision
    champion_before: str | None


def gate_step(settings: Settings, line: Line, ev: Evaluation, version: str, run_id: str) -> GateOutcome:
    """Re-evaluate the champion on the same held-out data, decide, then move the aliases (or record the no)."""
    registry.configure(settings)
    client, name = registry.client(), settings.mlflow.registered_model
    champ_mv = registry.champion_version(client, name)
    champion = None
    if champ_mv is not None:
        weights = registry.load_weights(f"models:/{name}@{registry.CHAMPION}")
        memory = Memory.open(settings)
        losses, _ = measure(load_model(weights), memory, memory.version, line.trained, settings)
        champion = Champion(str(champ_mv.version), losses)
    candidate = Candidate(new_drop=line.trained[-1], losses=ev.drop_losses, best_ever=best_ever(line))
    decision = decide(candidate, champion, settings.gate)
    registry.apply_decision(client, name, version, decision)
    registry.log_record(
        run_id,
        tags={"amr.gate": "promoted" if decision.promote else "rejected"},
        texts={
            "gate/report.md": decision.to_markdown(),
            "gate/rows.json": json.dumps(decision.rows, default=str, indent=2),
        },
    )
    return GateOutcome(version, decision, str(champ_mv.version) if champ_mv else None)


class DropReport(BaseModel):
    """What one drop's refresh did: the flow's return value (one per drop) and what `amr refresh` prints."""

    drop_id: str
    run_id: str
    steps: int
    sequences: int
    replay_sequences: int
    resumed_from_step: int
    final_loss: float | None
    version: str
    promote: bool
    reasons: list[str]
    champion_before: str | None
    forgetting_avg: float | None
    forgetting_max: float | None
    plasticity: float | None
    losses: dict[str, float | None]

    @classmethod
    def build(
        cls, drop_id: str, run_id: str, trained: TrainResult, evaluation: Evaluation, outcome: GateOutcome
    ) -> DropReport:
        f = evaluation.forgetting
        return cls(
            drop_id=drop_id,
            run_id=run_id,
            steps=trained.steps,
            sequences=trained.sequences,
            replay_sequences=trained.replay_sequences,
            resumed_from_step=trained.resumed_from_step,
            final_loss=_finite(trained.final_loss),
            version=outcome.version,
            promote=outcome.decision.promote,
            reasons=list(outcome.decision.reasons),
            champion_before=outcome.champion_before,
            forgetting_avg=_finite(f.avg),
            forgetting_max=_finite(f.max),
            plasticity=_finite(f.plasticity),
            losses={d: _finite(v) for d, v in evaluation.drop_losses.items()},
        )


def _finite(x: float) -> float | None:
    """JSON has no NaN: a value that was not measured (or diverged) is None in the report."""
    return float(x) if x is not None and math.isfinite(x) else None
