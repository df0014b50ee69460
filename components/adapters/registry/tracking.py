"""MLflow tracking: the store, one run per drop with its parameters and lineage, and everything logged into it.

Every MLflow call of a refresh lives in this package; the refresh steps pass plain values. A run is re-opened by id
for each record, so a retried step logs into the same run. Credentials stay in the environment
(MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*), where MLflow and LanceDB read them; a URI with a password in it is
redacted before it is logged.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from components.core.config import Settings

REPO = Path(__file__).resolve().parents[3]  # the checkout this code runs from, for the run's git revision
TAG_LIMIT = 5000  # fits every MLflow backend's tag value
FLUSH_EVERY = 20  # steps of metrics sent to MLflow in one batch
# MLFLOW_TRACKING_URI as the user set it, and the value configure() exported (mlflow.set_tracking_uri sets it)
_ENV: dict[str, str | None] = {}


class RegistryError(RuntimeError):
    """The registry refuses: unsafe weight files, no run to log into, no previous champion to roll back to."""


def configure(settings: Settings) -> str:
    """Point MLflow's tracking and registry at the configured store and select the experiment; returns the URI.

    The URI is `mlflow.tracking_uri`, else the user's MLFLOW_TRACKING_URI, else SQLite under AMR_HOME. A local
    store keeps its artifacts under AMR_HOME/mlartifacts, so everything of one home stays in one directory.
    Requests to a tracking server are retried by MLflow itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, with
    exponential backoff: a server restarting for seconds or a few minutes is ridden out); one that still does not
    answer is a `RegistryError` of one line.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per-file bars drown the flow's log
    home = Path(settings.home).expanduser().resolve()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if "exported" in _ENV and env == _ENV["exported"]:
        env = _ENV["user"]  # MLflow exported our previous choice; it is not the user's setting
    uri = settings.mlflow.tracking_uri or env
    if not uri:
        home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{home / 'mlflow.db'}"
    local = _is_local(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _ENV.update(user=env, exported=uri)
    name = settings.mlflow.experiment
    client = MlflowClient()
    try:
        experiment = client.get_experiment_by_name(name)
    except MlflowException as exc:
        if local:
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RegistryError(
            f"MLflow tracking server {redact(uri)} did not answer after MLflow's retries ({first}). Fix: start it "
            "(`make stack` runs one), or point MLFLOW_TRACKING_URI / mlflow.tracking_uri at a running server; "
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES and _BACKOFF_FACTOR set how long amr waits for one that restarts."
        ) from None
    if experiment is None:
        location = (home / "mlartifacts").as_uri() if local else None
        try:
            client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # created meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    mlflow.set_experiment(name)
    return uri


def start_run(
    settings: Settings, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> mlflow.ActiveRun:
    """`configure`, then an `mlflow.ActiveRun` (a context manager) tagged with the strategy and git revision."""
    configure(settings)
    base = {"amr.strategy": settings.replay.strategy, "amr.git_rev": git_rev()}
    return mlflow.start_run(run_name=run_name, tags=base | dict(tags or {}))


def git_rev() -> str:
    """The commit this code runs from, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else "unknown"


def flat_params(settings: Settings) -> dict[str, str]:
    """Every configuration field as `section.key` -> value (JSON for non-strings), credentials redacted."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = redact(value) if isinstance(value, str) else json.dumps(value)

    walk("", settings.model_dump(mode="json"))
    return out


def log_params_flat(settings: Settings) -> dict[str, str]:
    """Log `flat_params(settings)` on the active run; returns what was logged."""
    params = flat_params(settings)
    mlflow.log_params(params)
    return params


def redact(uri: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`; anything else unchanged."""
    parts = urlsplit(uri)
    if "://" not in uri or parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _is_local(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # one letter: a Windows drive


# ---- logging into a run ---------------------------------------------------------------------------------


class StepLogger:
    """Buffers per-step training metrics and sends them to the run in batches (`train/<key>` unless namespaced)."""

    def __init__(self, run_id: str):
        self.client, self.run_id, self.buffer = MlflowClient(), run_id, []

    def __call__(self, step: int, stats: Mapping[str, float]) -> None:
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


def create_run(settings: Settings, run_name: str, tags: Mapping[str, str]) -> str:
    """A new RUNNING run in the configured experiment, tagged with the strategy and git revision; returns its id.

    Created through the client, not `mlflow.start_run`: a drop's run stays RUNNING across the steps and processes
    that log into it, and only `finish_run` ends it."""
    configure(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    base = {"amr.strategy": settings.replay.strategy, "amr.git_rev": git_rev()}
    return client.create_run(experiment.experiment_id, run_name=run_name, tags=base | dict(tags)).info.run_id


@contextmanager
def active_run(run_id: str) -> Iterator[None]:
    """`run_id` as the active run for MLflow's fluent calls that need one; it stays RUNNING afterwards."""
    with mlflow.start_run(run_id=run_id):
        yield
    MlflowClient().update_run(run_id, status="RUNNING")


def unfinished_run(settings: Settings, tags: Mapping[str, str]) -> str | None:
    """The newest run with all of `tags` that did not finish (a killed or failed attempt to resume), if any."""
    configure(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"{where} and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def or_none(get, *args):
    """`get(*args)`, or None where MLflow answers that the run, model or version does not exist (other errors
    propagate)."""
    try:
        return get(*args)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def reopen_run(run_id: str) -> bool:
    """Mark an interrupted run RUNNING again to resume logging into it; False if the store has no such run."""
    client = MlflowClient()
    run = or_none(client.get_run, run_id)
    if run is None or run.info.lifecycle_stage != "active":
        return False
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return True


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """End a drop's run: FINISHED once it is gated, FAILED after an error, KILLED after an interrupt."""
    MlflowClient().set_terminated(run_id, status)


def run_has_params(run_id: str) -> bool:
    return bool(MlflowClient().get_run(run_id).data.params)


def log_record(
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    step: int | None = None,
    tags: Mapping[str, str] | None = None,
    dicts: Mapping[str, Any] | None = None,
    texts: Mapping[str, str] | None = None,
    artifacts: Sequence[tuple[Path, str]] = (),
) -> None:
    """Log into the run `run_id` without ending it: finite metrics (at `step`), tags, JSON files, text files and
    (file, folder) pairs."""
    client, now = MlflowClient(), int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in (metrics or {}).items() if math.isfinite(v)]
    if batch or tags:
        client.log_batch(run_id, metrics=batch, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for name, data in (dicts or {}).items():
        client.log_dict(run_id, data, name)
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for path, folder in artifacts:
        client.log_artifact(run_id, str(path), folder)


def truncate(text: str, limit: int = TAG_LIMIT, marker: str = " ... (truncated)") -> str:
    return text if len(text) <= limit else text[: limit - len(marker)] + marker
