"""The steps of one refresh, as plain functions: the Prefect flow (flows/refresh.py) and the CLI wrap them.

For every new drop, in memory order: open an MLflow run (params, lineage tags, the memory version as a dataset
input) -> train with replay, logging step metrics -> evaluate and log the loss matrix and forgetting -> register
the weights as a model version -> gate against the champion and move the aliases (or not).

The line keeps training continually from its own latest model, promoted or not: the gate decides what is
served (`@champion`), not what the next refresh starts from. A run is re-opened by id in every step, so a
retried step logs into the same run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from components import locks, registry
from components.config import Settings
from components.evaluation import Evaluation, evaluate_line, measure
from components.gate import Candidate, Champion, Decision, decide
from components.lines import Line
from components.locks import RefreshBusy  # noqa: F401  (re-exported for the CLI and tests)
from components.memory import Memory
from components.plots import plot_arm_probabilities
from components.training.distributed import launch
from components.training.loop import TrainResult, train_drop
from components.training.model import load_model

FLUSH_EVERY = 20  # steps of metrics sent to MLflow in one batch


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
    if line.state.get("rolled_back_to"):
        tags["amr.data_rollback"] = line.state["rolled_back_to"]
    with registry.start_run(settings, run_name=f"{line.name}-{drop_id}", tags=tags) as run:
        registry.log_params_flat(settings)
        registry.log_memory_input(settings.memory_uri, memory.version, memory.ingested())
    if line.state.pop("rolled_back_to", None):  # recorded on the first run after the rollback (components.rollback)
        line.save()
    return run.info.run_id


class StepLogger:
    """Buffers per-step training metrics and sends them to the run in batches."""

    def __init__(self, run_id: str):
        self.client, self.run_id, self.buffer = MlflowClient(), run_id, []

    def __call__(self, step: int, stats: dict) -> None:
        now = int(time.time() * 1000)
        for key, value in stats.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.buffer.append(Metric(key if "/" in key else f"train/{key}", float(value), now, step))
        if step % FLUSH_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


def train_step(settings: Settings, line: Line, drop_id: str, run_id: str) -> TrainResult:
    """Train (resuming from the drop's checkpoint after a crash or a retry) and log the run's training record."""
    registry.configure(settings)
    if settings.train.nproc > 1:  # torchrun: rank 0 logs the step metrics into the same run
        result = launch(settings, line, drop_id, run_id=run_id)
    else:
        logger = StepLogger(run_id)
        result = train_drop(settings, Memory.open(settings), line, drop_id, on_step=logger)
        logger.flush()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                "train/steps": result.steps,
                "train/sequences": result.sequences,
                "train/new_sequences": result.new_sequences,
                "train/replay_sequences": result.replay_sequences,
                "train/wall_seconds": result.wall_seconds,
            }
        )
        mlflow.set_tag("amr.resumed_from_step", str(result.resumed_from_step))
        mlflow.log_dict({k: v for k, v in asdict(result).items()}, "train/result.json")
        if line.state.get("sampler"):
            mlflow.log_dict(line.state["sampler"], "sampler/state.json")
        if result.arm_probabilities:
            path = line.root / "eval" / "arm_probabilities.png"
            plot_arm_probabilities(result.arm_keys, result.arm_probability_steps, result.arm_probabilities, path)
            mlflow.log_artifact(str(path), "sampler")
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
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=len(line.trained))
        for path in ev.artifacts.values():
            mlflow.log_artifact(str(path), "eval")
    return ev


def register_step(settings: Settings, line: Line, run_id: str) -> str:
    """Log the line's current weights as a new version of the registered model; returns the version."""
    registry.configure(settings)
    drop = line.trained[-1]
    meta = {
        "line": line.name,
        "drop": drop,
        "drops": line.trained,
        "memory_version": line.state["versions"][drop],
        "run_id": run_id,
        "tokenizer": settings.ingest.tokenizer,
    }
    with mlflow.start_run(run_id=run_id):
        mv = registry.log_model_version(line.model_dir, meta, settings.mlflow.registered_model)
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
    client, name = MlflowClient(), settings.mlflow.registered_model
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
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("amr.gate", "promoted" if decision.promote else "rejected")
        mlflow.log_text(decision.to_markdown(), "gate/report.md")
        mlflow.log_text(json.dumps(decision.rows, default=str, indent=2), "gate/rows.json")
    return GateOutcome(version, decision, str(champ_mv.version) if champ_mv else None)
