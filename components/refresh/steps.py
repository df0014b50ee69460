"""The steps of one refresh, as plain functions: the Prefect flow (flows/refresh.py) and the CLI wrap them.

For every new drop, in memory order: open an MLflow run (params, lineage tags, the memory version as a dataset
input) -> train with replay, logging step metrics -> evaluate and log the loss matrix and forgetting -> register
the weights as a model version -> gate against the champion and move the aliases (or not). Each step returns a
typed value; `DropReport.build` joins them into the per-drop report the flow returns and the CLI renders.

A state machine per drop (`DropProgress` in the line's state): planned -> run_opened -> trained -> evaluated ->
registered -> gated, each phase saved before the next starts, and each step idempotent, so a rerun after a kill
anywhere resumes the drop where it stopped: it reopens the drop's run (found by the recorded id, or by its tags if
the kill came before the id was saved), skips a committed training, finds a version already registered from the
run, and re-derives a gate decision from the same baseline. The run is FINISHED only once the drop is gated; an
error marks it FAILED and an interrupt KILLED, and the rerun reopens that same run. So every drop ends with exactly
one finished run and one model version with a decision.

The line keeps training continually from its own latest model, promoted or not: the gate decides what is
served (`@champion`), not what the next refresh starts from. Every MLflow call goes through the registry adapter,
which re-opens the run by id, so a retried step logs into the same run. The gate step, with the choice of its
baseline, is components.refresh.gating (re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from pydantic import BaseModel

from components.adapters import locks, registry
from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.plots import plot_arm_probabilities
from components.evaluation import Evaluation, evaluate_line
from components.refresh.gating import GateOutcome, best_ever, gate_step
from components.training.compat import check_model
from components.training.launcher import launch
from components.training.loop import TrainResult, train_drop

__all__ = [
    "DropReport",
    "GateOutcome",
    "best_ever",
    "compact_step",
    "drops_to_train",
    "evaluate_step",
    "fail_run",
    "gate_step",
    "open_run",
    "refresh_lock",
    "register_step",
    "train_step",
]

log = logging.getLogger(__name__)


@contextmanager
def refresh_lock(settings: Settings, wait_seconds: float = 0.0) -> Iterator[None]:
    """One refresh at a time per AMR_HOME: a second one waits `wait_seconds`, then fails naming who holds it."""
    with locks.refresh_lock(settings.home, wait_seconds):
        yield


def compact_step(settings: Settings) -> str:
    """Compact the memory once `memory.compact_fragments` small fragments have piled up (a no-op before), so replay
    takes stay flat as drops accumulate (components.adapters.compaction); returns what was done."""
    cfg = settings.memory
    report = Memory.open(settings).compact(cfg.compact_rows_per_fragment, cfg.compact_fragments)
    return f"memory version {report.version}: {report.note}"


def drops_to_train(settings: Settings, line: Line, force: bool = False) -> list[str]:
    """Drops whose refresh was interrupted (first, to finish them), then the ingested drops the line has not
    trained on; with `force` and none of either, the last drop again (rewound)."""
    memory = Memory.open(settings)
    if settings.memory.verify_on_refresh:
        memory.verify()  # corrupted or missing data files stop the refresh here, named, before any training
    check_model(settings, memory.meta(), memory.tokenizer_identity(), line.model_dir)  # before any run opens
    ingested = memory.ingested()
    resume = [d for d in line.in_flight() if d in ingested]
    todo = resume + [d for d in ingested if d not in line.trained and d not in resume]
    if not todo and force and line.trained:
        return [line.rewind()]
    return todo


def open_run(settings: Settings, line: Line, drop_id: str) -> str:
    """The drop's MLflow run with every parameter and the lineage (reopened if an attempt was interrupted)."""
    registry.configure(settings)
    recorded = line.progress(drop_id).run_id
    if recorded and registry.reopen_run(recorded):
        return recorded
    memory = Memory.open(settings)
    position = line.trained.index(drop_id) if drop_id in line.trained else len(line.trained)
    tags = {"amr.line": line.name, "amr.drop": drop_id, "amr.refresh": str(position + 1)}
    if line.rollback_note:
        tags["amr.data_rollback"] = line.rollback_note
    run_id = registry.open_run(settings, f"{line.name}-{drop_id}", tags, memory.version, memory.ingested())
    line.advance(drop_id, "run_opened", run_id=run_id)
    line.clear_rollback_note()  # recorded on the first run after the rollback (components.versioning.rollback)
    return run_id


def fail_run(run_id: str, error: BaseException) -> None:
    """Mark the drop's run KILLED (an interrupt) or FAILED (an error); the rerun reopens it. Never raises: the
    original error is what the caller must see."""
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:
        registry.finish_run(run_id, status)
    except Exception as exc:  # the tracking store itself may be what failed
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)


def train_step(settings: Settings, line: Line, drop_id: str, run_id: str) -> TrainResult:
    """Train (resuming from the drop's checkpoint after a crash or a retry) and log the run's training record.

    A drop whose training was committed before an interruption is not trained again: its record is logged."""
    registry.configure(settings)
    if drop_id in line.trained:
        result = TrainResult(**line.trained_record(drop_id))
    elif settings.train.nproc > 1:  # torchrun: rank 0 logs the step metrics into the same run
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


def evaluate_step(settings: Settings, line: Line, drop_id: str, run_id: str) -> Evaluation:
    """Held-out losses of every drop the line trained (recomputed on a rerun: deterministic, and the gate needs
    them), logged once."""
    registry.configure(settings)
    ev = evaluate_line(settings, Memory.open(settings), line)
    if line.progress(drop_id).reached("evaluated"):
        return ev
    f = ev.forgetting
    metrics = {f"eval/loss/{d}": v for d, v in ev.drop_losses.items()}
    metrics |= {f"eval/forgetting/{d}": v for d, v in f.per_drop.items()}
    metrics |= {
        "eval/forgetting_avg": f.avg,
        "eval/forgetting_max": f.max,
        "eval/rel_forgetting_avg": f.rel_avg,
        "eval/plasticity": f.plasticity,
    }
    metrics |= {f"eval/nonfinite/{d}": n for d, n in ev.nonfinite.items()}
    metrics |= {f"eval/base_loss/{d}": v for d, v in ev.matrix.base.items()}
    metrics |= {f"eval/vs_base/{d}": v for d, v in f.vs_base.items()}
    registry.log_record(
        run_id, metrics=metrics, step=len(line.trained), artifacts=[(p, "eval") for p in ev.artifacts.values()]
    )
    line.advance(drop_id, "evaluated", healthy=ev.healthy)
    return ev


def register_step(settings: Settings, line: Line, drop_id: str, run_id: str) -> str:
    """Log the line's current weights as a new version of the registered model (once: a version already logged
    from the run is reused); returns the version."""
    if line.progress(drop_id).version:
        return line.progress(drop_id).version
    registry.configure(settings)
    drop = drop_id
    meta = {
        "line": line.name,
        "drop": drop,
        "drops": line.trained,
        "memory_version": line.state.versions[drop],
        "run_id": run_id,
        "tokenizer": settings.ingest.tokenizer,
    }
    client, name = registry.client(), settings.mlflow.registered_model
    mv = registry.version_of_run(client, name, run_id)
    if mv is None:
        mv = registry.log_model_version(line.model_dir, meta, name, run_id=run_id)
    else:  # registered before an interruption; its tags may not all be there
        registry.tag_version(client, name, str(mv.version), meta)
    line.advance(drop_id, "registered", version=str(mv.version))
    return str(mv.version)


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
    vs_base: dict[str, float | None] = {}  # relative loss change against the base model (a pretrained line only)

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
            vs_base={d: _finite(v) for d, v in f.vs_base.items()},
        )


def _finite(x: float) -> float | None:
    """JSON has no NaN: a value that was not measured (or diverged) is None in the report."""
    return float(x) if x is not None and math.isfinite(x) else None
