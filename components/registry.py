"""MLflow adapter: tracking store, run lineage, model versions and the `champion` / `previous` aliases.

Thin I/O only; the gate's decision is made in `components.gate`. Models are logged as MLflow "models from
code": `components/serving.py` is copied as the model's code and the weights travel as a safetensors
directory, so nothing is pickled and a version loads offline from `models:/<name>@champion`. Only aliases
are used, never the deprecated stages. Credentials stay in the environment (MLFLOW_TRACKING_USERNAME/PASSWORD,
AWS_*), where MLflow and LanceDB read them; a URI with a password in it is redacted before it is logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from components import serving
from components.config import Settings
from components.gate import Decision

CHAMPION, PREVIOUS = "champion", "previous"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib")
REASONS_LIMIT = 5000  # fits every MLflow backend's tag value; the full text is in gate/report.md
REPO = Path(__file__).resolve().parents[1]
# MLFLOW_TRACKING_URI as the user set it, and the value configure() exported (mlflow.set_tracking_uri sets it)
_ENV: dict[str, str | None] = {}


class RegistryError(RuntimeError):
    """The registry refuses: unsafe weight files, no run to log into, no previous champion to roll back to."""


# ---- tracking ----------------------------------------------------------------------------------------------


def configure(settings: Settings) -> str:
    """Point MLflow's tracking and registry at the configured store and select the experiment; returns the URI.

    The URI is `mlflow.tracking_uri`, else the user's MLFLOW_TRACKING_URI, else SQLite under AMR_HOME. A local
    store keeps its artifacts under AMR_HOME/mlartifacts, so everything of one home stays in one directory.
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
    if client.get_experiment_by_name(name) is None:
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


class LanceDBSource(DatasetSource):
    """Where training data came from: a LanceDB table at one version (the memory is append-only)."""

    def __init__(self, uri: str, version: int, table: str = "sequences"):
        self.uri, self.version, self.table = uri, int(version), table

    @staticmethod
    def _get_source_type() -> str:
        return "lancedb"

    def load(self, storage_options: dict[str, str] | None = None):
        """The table checked out at the recorded version (credentials come from the environment)."""
        import lancedb

        table = lancedb.connect(self.uri, storage_options=storage_options).open_table(self.table)
        table.checkout(self.version)
        return table

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # a bare path or s3:// URI is not recognisably LanceDB; build the source explicitly

    @classmethod
    def _resolve(cls, raw_source: Any) -> LanceDBSource:
        raise MlflowException(f"LanceDBSource is built from (uri, version), not resolved from {raw_source!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "table": self.table, "version": self.version}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> LanceDBSource:
        return cls(source_dict["uri"], source_dict["version"], source_dict.get("table", "sequences"))


register_dataset_source(LanceDBSource)  # lets mlflow.data.get_source() rebuild it from a run's inputs


def log_memory_input(uri: str, version: int, drops: list[str]) -> None:
    """Record the memory version a run trained on, as an MLflow dataset input and as lineage tags.

    The digest hashes (uri, table, version): a LanceDB version fixes the content within one table, and
    hashing the rows themselves would mean reading the whole memory.
    """
    source = LanceDBSource(redact(uri), version)
    digest = hashlib.sha256(source.to_json().encode()).hexdigest()[:16]
    mlflow.log_input(MetaDataset(source, name="amr-memory", digest=digest), context="training")
    mlflow.set_tags({"amr.memory_version": str(int(version)), "amr.drops": _truncate(",".join(drops), 8000)})


# ---- model versions ----------------------------------------------------------------------------------------


def log_model_version(model_dir: Path, meta: Mapping[str, Any], registered_model: str) -> ModelVersion:
    """Log the safetensors model in `model_dir` on the active run and register it; returns the new version.

    `meta` (JSON-able: drops, memory version, tokenizer, losses...) goes into the MLmodel metadata and, one
    `amr.<key>` tag per entry, onto the version. Pip requirements are pinned explicitly so that logging never
    runs MLflow's requirement inference (which imports the model and may reach the network).
    """
    model_dir = Path(model_dir)
    check_safe_weights(model_dir)
    if mlflow.active_run() is None:
        raise RegistryError("log_model_version needs an active run: call it inside registry.start_run(...)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=serving.__file__,
            artifacts={serving.WEIGHTS: str(model_dir)},
            signature=serving.SIGNATURE,
            pip_requirements=serving.requirements(),
            metadata=json.loads(json.dumps(dict(meta), default=str)),
            model_config={"device": "auto"},
            registered_model_name=registered_model,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    unsafe = [p for p in _artifact_files(info.artifact_path) if p.lower().endswith(PICKLE_SUFFIXES)]
    if unsafe:
        client.delete_model_version(registered_model, version)
        raise RegistryError(f"pickle-based files ended up in the logged model: {unsafe}; version {version} deleted")
    for key, value in meta.items():
        client.set_model_version_tag(registered_model, version, f"amr.{key}", _truncate(_tag_text(value)))
    return client.get_model_version(registered_model, version)


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


# ---- aliases -----------------------------------------------------------------------------------------------


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind `@champion`, or None (no such registered model, or no champion yet)."""
    return _alias_version(client, name, CHAMPION)


def set_champion(
    client: MlflowClient, name: str, version: str, decision: Decision, manual: bool = False
) -> ModelVersion:
    """Move `champion` to `version` (the old champion becomes `previous`) and record the decision on it.

    A rejected decision moves nothing unless `manual` (an operator's override, tagged `amr.gate=manual`).
    Aliases move first: a crash before the tags leaves an untagged champion, never a "promoted" non-champion.
    """
    if not (decision.promote or manual):
        raise RegistryError(f"the gate rejected {name} version {version}; use record_rejection, or manual=True")
    target = client.get_model_version(name, str(version))
    old = champion_version(client, name)
    if old is not None and str(old.version) != str(target.version):
        client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    client.set_registered_model_alias(name, CHAMPION, str(target.version))
    _record(client, target, "manual" if manual else "promoted", decision)
    return client.get_model_version(name, target.version)


def apply_decision(client: MlflowClient, name: str, version: str, decision: Decision) -> ModelVersion:
    """The gate's action: promote (`set_champion`) or record the rejection, as `decision` says."""
    if decision.promote:
        return set_champion(client, name, version, decision)
    return record_rejection(client, name, version, decision)


def record_rejection(client: MlflowClient, name: str, version: str, decision: Decision) -> ModelVersion:
    """Tag a version the gate rejected (`amr.gate=rejected`, reasons, report); aliases stay where they are."""
    if decision.promote:
        raise RegistryError(f"the decision for {name} version {version} is to promote; use set_champion")
    target = client.get_model_version(name, str(version))
    _record(client, target, "rejected", decision)
    return client.get_model_version(name, target.version)


def rollback_champion(client: MlflowClient, name: str) -> ModelVersion:
    """`champion` back to `previous`; `previous` is then cleared, so a second rollback fails instead of flipping."""
    prev = _alias_version(client, name, PREVIOUS)
    if prev is None:
        raise RegistryError(f"registered model {name!r} has no '{PREVIOUS}' version to roll back to")
    current = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(prev.version))
    client.delete_registered_model_alias(name, PREVIOUS)
    if current is not None and str(current.version) != str(prev.version):
        client.set_model_version_tag(name, current.version, "amr.rolled_back", f"champion back to {prev.version}")
    return client.get_model_version(name, prev.version)


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(alias)
    return client.get_model_version(name, str(version)) if version is not None else None


def _record(client: MlflowClient, mv: ModelVersion, outcome: str, decision: Decision) -> None:
    report = decision.to_markdown()
    if outcome == "manual":
        report = f"**Manual override**: version {mv.version} was made champion by hand.\n\n{report}"
    client.set_model_version_tag(mv.name, mv.version, "amr.gate", outcome)
    client.set_model_version_tag(
        mv.name,
        mv.version,
        "amr.gate_reasons",
        _truncate("; ".join(decision.reasons), marker=" ... (truncated; see gate/report.md)"),
    )
    if mv.run_id:
        client.log_text(mv.run_id, report, "gate/report.md")


def _tag_text(value: Any) -> str:
    """Tags read like the run's lineage tags: `d1,d2` for a list of drops, JSON for anything nested."""
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _truncate(text: str, limit: int = REASONS_LIMIT, marker: str = " ... (truncated)") -> str:
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


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


def _is_local(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # one letter: a Windows drive
