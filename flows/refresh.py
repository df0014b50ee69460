"""Prefect flow: the main job. Every new drop goes through ingest, training with replay, evaluation,
registration and the promotion gate, and leaves a complete record in MLflow.

Each task is a thin wrapper over components.refresh.steps; retries, tags and caching live here. Training is tagged
`gpu` (a Prefect tag-based concurrency limit or a GPU work pool can target it) and retried: `train_drop` resumes
from the drop's last checkpoint, so a retry continues instead of starting over. One refresh runs at a time per
AMR_HOME (a file lock; the deployment in prefect.yaml also has `concurrency_limit: 1`).
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.adapters.lines import Line
from components.core.config import Settings, load_settings
from components.evaluation import Evaluation
from components.refresh import steps
from components.training.loop import TrainResult
from flows.ingest import ingest_drops


@task(cache_policy=NO_CACHE)
def plan(settings: Settings, line: str, force: bool) -> list[str]:
    return steps.drops_to_train(settings, Line(settings.home, line), force)


@task(retries=1, retry_delay_seconds=[10], cache_policy=NO_CACHE)
def compact(settings: Settings) -> str:
    return steps.compact_step(settings)


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def open_run(settings: Settings, line: str, drop_id: str) -> str:
    return steps.open_run(settings, Line(settings.home, line), drop_id)


@task(retries=2, retry_delay_seconds=[10, 60], tags=["gpu"], cache_policy=NO_CACHE)
def train(settings: Settings, line: str, drop_id: str, run_id: str) -> TrainResult:
    return steps.train_step(settings, Line(settings.home, line), drop_id, run_id)


@task(retries=1, retry_delay_seconds=[10], cache_policy=NO_CACHE)
def evaluate(settings: Settings, line: str, drop_id: str, run_id: str) -> Evaluation:
    return steps.evaluate_step(settings, Line(settings.home, line), drop_id, run_id)


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def register(settings: Settings, line: str, drop_id: str, run_id: str) -> str:
    return steps.register_step(settings, Line(settings.home, line), drop_id, run_id)


@task(cache_policy=NO_CACHE)
def gate(
    settings: Settings, line: str, drop_id: str, evaluation: Evaluation, version: str, run_id: str
) -> steps.GateOutcome:
    outcome = steps.gate_step(settings, Line(settings.home, line), drop_id, evaluation, version, run_id)
    create_markdown_artifact(
        markdown=f"# Gate for {drop_id} (model version {version})\n\n" + outcome.decision.to_markdown(),
        key="gate-" + re.sub(r"[^a-z0-9-]+", "-", f"{line}-{drop_id}".lower()).strip("-"),
        description=f"promotion decision for {settings.mlflow.registered_model} v{version}",
    )
    return outcome


@flow(name="amr-refresh", log_prints=True)
def refresh(
    source: str,
    params: str | None = None,
    force: bool = False,
    line: str = "main",
    strategy: str | None = None,
    wait_seconds: float = 0.0,
) -> list[steps.DropReport]:
    """Ingest new drops of `source`, finish any drop an earlier run left unfinished, then train, evaluate, register
    and gate each new drop in order."""
    settings = load_settings(params, **{"replay.strategy": strategy})
    logger = get_run_logger()
    with steps.refresh_lock(settings, wait_seconds):
        Line(settings.home, line)  # a corrupted line state fails here, before anything is ingested or trained
        for r in ingest_drops(settings, source):
            logger.info("ingest %-9s %s: %s", r["status"], r["drop_id"], r["message"])
        logger.info("compact: %s", compact(settings))  # past memory.compact_fragments small fragments
        todo = plan(settings, line, force)
        if not todo:
            logger.info(
                "no new drop in the memory for line %r: nothing to train (pass force=True to redo the last)", line
            )
            return []
        reports = []
        for drop_id in todo:  # an interrupted drop first: each step resumes where the last attempt stopped
            run_id = open_run(settings, line, drop_id)
            try:
                trained = train(settings, line, drop_id, run_id)
                evaluation = evaluate(settings, line, drop_id, run_id)
                version = register(settings, line, drop_id, run_id)
                outcome = gate(settings, line, drop_id, evaluation, version, run_id)
            except BaseException as exc:
                steps.fail_run(run_id, exc)
                raise
            report = steps.DropReport.build(drop_id, run_id, trained, evaluation, outcome)
            reports.append(report)
            logger.info(
                "%s: version %s %s (avg forgetting %s)",
                drop_id,
                version,
                "PROMOTED to champion" if report.promote else "rejected",
                "n/a" if report.forgetting_avg is None else f"{report.forgetting_avg:.4f}",
            )
        return reports
