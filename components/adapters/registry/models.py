"""Model versions in the MLflow registry: logged, registered, tagged, found again and their weights loaded.

Models are logged as MLflow "models from code": `serving.py` beside this file is copied as the model's code and the
weights travel as a safetensors directory, so nothing is pickled and a version loads offline from
`models:/<name>@champion`. The `champion` / `previous` aliases and the gate's decision are in registry.aliases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from components.adapters.registry import bundle, serving
from components.adapters.registry.aliases import champion_version
from components.adapters.registry.tracking import RegistryError, active_run, configure, truncate
from components.core.config import Settings

PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib")


# ---- model versions ----------------------------------------------------------------------------------------


def log_model_version(
    model_dir: Path, meta: Mapping[str, Any], registered_model: str, run_id: str | None = None
) -> ModelVersion:
    """Log the safetensors model in `model_dir` with its tokenizer on the run `run_id` (else the active run) and
    register it; returns the new version.

    The tokenizer is `meta["tokenizer"]` ('byte', the project default, when absent), saved as files beside the
    weights (see `bundle`), so the served model takes text. `meta` (JSON-able: drops, memory version, tokenizer,
    losses...) goes into the MLmodel metadata and, one `amr.<key>` tag per entry, onto the version. Pip
    requirements are pinned explicitly so that logging never runs MLflow's requirement inference (which imports
    the model and may reach the network).
    """
    if run_id is not None:
        with active_run(run_id):
            return log_model_version(model_dir, meta, registered_model)
    model_dir = Path(model_dir)
    check_safe_weights(model_dir)
    if mlflow.active_run() is None:
        raise RegistryError("log_model_version needs an active run: call it inside registry.start_run(...)")
    info = bundle.log_pyfunc(model_dir, str(meta.get("tokenizer", "byte")), meta)
    client = MlflowClient()
    version = str(_register(client, registered_model, info).version)
    unsafe = [p for p in _artifact_files(info.artifact_path) if p.lower().endswith(PICKLE_SUFFIXES)]
    if unsafe:
        client.delete_model_version(registered_model, version)
        raise RegistryError(f"pickle-based files ended up in the logged model: {unsafe}; version {version} deleted")
    return tag_version(client, registered_model, version, meta)


def _register(client: MlflowClient, name: str, info: Any) -> ModelVersion:
    """A new version of `name` from a logged model, through the client: `registered_model_name=` would do the same
    via `mlflow.register_model`, which prints its progress straight to stderr, past every log configuration."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, info.model_uri, run_id=info.run_id, model_id=info.model_id)


def tag_version(client: MlflowClient, name: str, version: str, meta: Mapping[str, Any]) -> ModelVersion:
    """One `amr.<key>` tag per `meta` entry on the version (idempotent: a resumed registration sets them again)."""
    for key, value in meta.items():
        client.set_model_version_tag(name, str(version), f"amr.{key}", truncate(_tag_text(value)))
    return client.get_model_version(name, str(version))


def load_weights(model_uri: str, dst: Path | None = None) -> Path:
    """Download a logged model (e.g. `models:/amr-model@champion`) and return its safetensors weights directory."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst) if dst else None))
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(serving.WEIGHTS, {}).get("path")
    if not rel:
        raise RegistryError(f"{model_uri} has no '{serving.WEIGHTS}' artifact: it was not logged by log_model_version")
    weights = (local / rel).resolve()
    if not weights.is_relative_to(local.resolve()):
        raise RegistryError(f"{model_uri}: weights path {rel!r} escapes the model directory")
    check_safe_weights(weights)
    return weights


def check_safe_weights(model_dir: Path) -> None:
    """A weights directory must hold a config and safetensors, and nothing that unpickles."""
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise RegistryError(f"{model_dir}: expected config.json and *.safetensors (see training.model.save_model)")
    unsafe = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if unsafe:
        raise RegistryError(f"{model_dir}: pickle-based files {unsafe} are refused; save weights as safetensors")


def _tag_text(value: Any) -> str:
    """Tags read like the run's lineage tags: `d1,d2` for a list of drops, JSON for anything nested."""
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _artifact_files(artifact_uri: str) -> list[str]:
    """Every file path under a logged model's artifact URI, through MLflow (works for local and served stores)."""
    repo_files, stack = [], [""]
    while stack:
        sub = stack.pop()
        uri = f"{artifact_uri.rstrip('/')}/{sub}" if sub else artifact_uri
        for info in mlflow.artifacts.list_artifacts(artifact_uri=uri):
            path = f"{sub}/{Path(info.path).name}" if sub else Path(info.path).name
            (stack if info.is_dir else repo_files).append(path)
    return repo_files


# ---- queries -----------------------------------------------------------------------------------------------


def latest_run(settings: Settings, line: str, drop: str) -> dict[str, Any]:
    """Gate tag, model version, champion and `train/result.json` of the line's newest run for `drop` ({} if none)."""
    configure(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`amr.line` = '{line}' and tags.`amr.drop` = '{drop}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return {}
    run = runs[0]
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    champion = champion_version(client, settings.mlflow.registered_model)
    try:
        result = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/train/result.json")
    except MlflowException:  # the run died before training finished
        result = {}
    return {
        "gate": run.data.tags.get("amr.gate", "none"),
        "model_version": int(versions[0].version) if versions else None,
        "champion": int(champion.version) if champion else None,
        "result": result,
    }


def client() -> MlflowClient:
    """A client of the store `configure` selected."""
    return MlflowClient()


def memory_versions_in_use(settings: Settings) -> dict[int, list[str]]:
    """Memory versions named by registered model versions (tag `amr.memory_version`), with who names them.

    Searched over every registered model of the tracking server: keeping a memory version too many is safe, losing
    one is not."""
    configure(settings)
    mlflow_client, token, refs = MlflowClient(), None, {}
    while True:
        page = mlflow_client.search_model_versions(max_results=1000, page_token=token)
        for mv in page:
            value = (mv.tags or {}).get("amr.memory_version", "")
            if value.isdigit():
                refs.setdefault(int(value), []).append(f"trained on by registered model {mv.name} version {mv.version}")
        token = page.token
        if not token:
            return refs


def line_version_weights(settings: Settings, line: str, drops: list[str]) -> tuple[Path, str] | None:
    """Weights of the newest version the refresh registered right after `line` trained exactly `drops`, if any.

    Returns (weights directory, "name version N"); None when there is no registry, no such version, or its weights
    are refused (not safetensors)."""
    name, trained = settings.mlflow.registered_model, ",".join(drops)
    try:
        configure(settings)
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
        for mv in sorted(versions, key=lambda v: -int(v.version)):
            if mv.tags.get("amr.line") == line and mv.tags.get("amr.drops") == trained:
                return load_weights(f"models:/{name}/{mv.version}"), f"{name} version {mv.version}"
    except Exception:  # no registry, no such model, unsafe weights: the caller starts the line over instead
        return None
    return None


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The newest version of `name` logged from the run `run_id` (registration is then not repeated), if any."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None
