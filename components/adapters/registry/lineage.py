"""Lineage: the memory version a run trained on, as an MLflow dataset input, and the run that records a drop."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from components.adapters.registry.tracking import (
    active_run,
    create_run,
    log_params_flat,
    log_record,
    redact,
    reopen_run,
    run_has_params,
    truncate,
    unfinished_run,
)
from components.core.config import Settings


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
    mlflow.set_tags({"amr.memory_version": str(int(version)), "amr.drops": truncate(",".join(drops), 8000)})


def open_run(
    settings: Settings,
    run_name: str,
    tags: Mapping[str, str],
    memory_version: int,
    drops: list[str],
    resume_on: tuple[str, ...] = ("amr.line", "amr.drop"),
) -> str:
    """The drop's run: an unfinished run with the same `resume_on` tags (an interrupted attempt) is reopened and
    re-tagged, else one is created; either way it holds every parameter and the memory version as a dataset input.
    Returns its id."""
    run_id = unfinished_run(settings, {k: tags[k] for k in resume_on})
    if run_id is not None and reopen_run(run_id):
        log_record(run_id, tags=tags)
    else:
        run_id = create_run(settings, run_name, tags)
    if not run_has_params(run_id):  # a run reopened after a kill right after its creation gets them now
        with active_run(run_id):
            log_params_flat(settings)
            log_memory_input(settings.memory_uri, memory_version, drops)
    return run_id
