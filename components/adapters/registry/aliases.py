"""The `champion` / `previous` aliases of a registered model in the MLflow registry, and the gate's decision recorded
on a version (`amr.gate`, its reasons, gate/report.md). Only aliases are used, never the deprecated stages. The
decision itself is made in `components.evaluation.gate`; this module only records it and moves the aliases
(anything with `promote`, `reasons` and `to_markdown()` will do). Model versions are in registry.models.
"""

from __future__ import annotations

from typing import Protocol

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from components.adapters.registry.tracking import TAG_LIMIT, RegistryError, or_none, truncate

CHAMPION, PREVIOUS = "champion", "previous"
REASONS_LIMIT = TAG_LIMIT  # the full text is in gate/report.md


class Verdict(Protocol):
    """What the registry records of a gate decision (`components.evaluation.gate.Decision` is one)."""

    promote: bool
    reasons: list[str]

    def to_markdown(self) -> str: ...


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind `@champion`, or None (no such registered model, or no champion yet)."""
    return _alias_version(client, name, CHAMPION)


def set_champion(
    client: MlflowClient, name: str, version: str, decision: Verdict, manual: bool = False
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


def apply_decision(client: MlflowClient, name: str, version: str, decision: Verdict) -> ModelVersion:
    """The gate's action: promote (`set_champion`) or record the rejection, as `decision` says."""
    if decision.promote:
        return set_champion(client, name, version, decision)
    return record_rejection(client, name, version, decision)


def record_rejection(client: MlflowClient, name: str, version: str, decision: Verdict) -> ModelVersion:
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


def previous_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind `@previous` (the champion the current one replaced), or None."""
    return _alias_version(client, name, PREVIOUS)


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    model = or_none(client.get_registered_model, name)
    if model is None:
        return None
    version = model.aliases.get(alias)
    return client.get_model_version(name, str(version)) if version is not None else None


def _record(client: MlflowClient, mv: ModelVersion, outcome: str, decision: Verdict) -> None:
    report = decision.to_markdown()
    if outcome == "manual":
        report = f"**Manual override**: version {mv.version} was made champion by hand.\n\n{report}"
    client.set_model_version_tag(mv.name, mv.version, "amr.gate", outcome)
    client.set_model_version_tag(
        mv.name,
        mv.version,
        "amr.gate_reasons",
        truncate("; ".join(decision.reasons), marker=" ... (truncated; see gate/report.md)"),
    )
    if mv.run_id:
        client.log_text(mv.run_id, report, "gate/report.md")


def recorded_decision(mv: ModelVersion) -> str | None:
    """The gate outcome recorded on a version (`promoted`, `rejected` or `manual`), if any."""
    return (mv.tags or {}).get("amr.gate")


def previous_candidate(client: MlflowClient, name: str, before: str) -> ModelVersion | None:
    """The newest version below `before` that a gate judged: the baseline when there is no champion yet."""
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if int(v.version) < int(before)]
    judged = [v for v in versions if recorded_decision(v)]
    return max(judged, key=lambda v: int(v.version)) if judged else None
