"""The promotion gate: a pure decision on held-out losses; moving MLflow aliases is `registry`'s job.

A candidate (the model just trained on `new_drop`) replaces the champion only if it keeps what the champion
knew and learned the new drop:
  * every past drop j:  regression_j = (cand_j - champ_j) / champ_j        <= max_regression
                        forgetting_j = (cand_j - best_ever_j) / best_ever_j <= max_forgetting
  * the new drop:       gain = (champ_new - cand_new) / champ_new           >= min_gain
The baseline ("champion" below) is the champion; with none yet, for a line that continues a pretrained model, the
base model (the loss matrix's `(base)` row: the candidate must gain on the new drop and keep what the base knew);
otherwise the newest version a gate judged before. With no baseline at all (the very first version of a line
trained from scratch), the candidate is promoted iff it has at least one loss and every loss is finite.

Fail closed: a metric a check needs that is missing, non-finite or out of range (a loss below zero, a zero
denominator) rejects the candidate with a reason naming it. So does a drop the champion or the best-ever
record knows that the candidate was not evaluated on: a missing evaluation must never look like a pass.
Every check, passed or failed, leaves a sentence in `reasons` and a row in `rows`, so a reader of the
report sees why without re-running anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from components.core.config import GateConfig


@dataclass(frozen=True)
class Candidate:
    new_drop: str
    losses: Mapping[str, float]  # held-out loss per drop: every drop trained so far, new_drop included
    best_ever: Mapping[str, float] = field(default_factory=dict)  # min over the line's history, per past drop
    nonfinite: Mapping[str, int] = field(default_factory=dict)  # held-out sequences with inf/NaN loss, per drop
    uniform_loss: float = math.inf  # ln(vocabulary): a loss above it is worse than guessing, the model diverged


@dataclass(frozen=True)
class Champion:
    version: str
    losses: Mapping[str, float]  # the champion re-evaluated now, on the same held-out data
    kind: Literal["champion", "previous", "base"] = "champion"  # previous: the newest version judged, no champion

    @property
    def name(self) -> str:
        """How reasons name the baseline."""
        if self.kind == "base":
            return f"base model {self.version}"
        return f"{'champion' if self.kind == 'champion' else 'previous'} version {self.version}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]  # every check, pass or fail, as a sentence with its numbers
    rows: list[dict[str, Any]]  # drop, role, candidate, champion, best_ever, regression, forgetting, limit, ok

    def to_markdown(self) -> str:
        """A verdict, the table behind it and the reasons: the Prefect artifact and MLflow's gate/report.md."""
        verdict = "PROMOTE" if self.promote else "REJECT"
        lines = [f"## Gate: {verdict}", ""]
        if self.rows:
            cols = ["drop", "role", "candidate", "champion", "best_ever", "regression", "forgetting", "limit", "ok"]
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in self.rows:
                cells = [_cell(row.get(c), percent=c in ("regression", "forgetting")) for c in cols]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines) + "\n"


def decide(candidate: Candidate, champion: Champion | None, thresholds: GateConfig) -> Decision:
    """Promote or not, with every reason; pure (no I/O), so every branch is a table-driven unit test."""
    bad_limits = [k for k, v in thresholds.model_dump().items() if isinstance(v, float) and math.isnan(v)]
    if bad_limits:
        return Decision(False, [f"reject: gate threshold(s) {', '.join(bad_limits)} are NaN"], [])
    if not candidate.losses:
        return Decision(False, ["reject: the candidate has no held-out loss at all"], [])
    diverged = _diverged(candidate)
    if diverged:
        return Decision(False, diverged, [])
    if champion is None:
        return _first_champion(candidate)
    return _against_champion(candidate, champion, thresholds)


def _diverged(candidate: Candidate) -> list[str]:
    """Reasons why the candidate diverged: sequences with a non-finite loss, or a loss above the uniform guess.

    Checked before anything else, with or without a champion: the first-champion rule (finite losses) would
    otherwise promote a model whose losses are finite but huge."""
    reasons = [
        f"reject: {n} held-out sequence(s) of drop {drop} have a non-finite loss (the model diverged)"
        for drop, n in candidate.nonfinite.items()
        if n
    ]
    reasons += [
        f"reject: the loss of drop {drop} is {loss:.4g}, above {candidate.uniform_loss:.4g} = ln(vocabulary), the "
        "loss of guessing every token uniformly (the model diverged)"
        for drop, loss in candidate.losses.items()
        if isinstance(loss, int | float) and math.isfinite(loss) and loss > candidate.uniform_loss
    ]
    return reasons


def override(decision: Decision | None, note: str) -> Decision:
    """A manual promotion (`amr promote VERSION`): keeps what the gate said, if it ran, and records who overrode it."""
    said = "no gate decision was recorded" if decision is None else f"the gate said {_verdict(decision)}"
    reasons = [f"manual override: {note or 'no note given'} ({said})"]
    return Decision(True, reasons + (decision.reasons if decision else []), decision.rows if decision else [])


def _first_champion(candidate: Candidate) -> Decision:
    """No champion yet: nothing to regress against, so only sanity is required (finite losses)."""
    rows, failures = [], []
    if candidate.new_drop not in candidate.losses:
        failures.append(f"reject: candidate loss of the new drop {candidate.new_drop} is missing")
    for drop, loss in candidate.losses.items():
        problem = _problem(loss, denominator=False)
        role = "new" if drop == candidate.new_drop else "past"
        rows.append(_row(drop, role, loss, None, candidate.best_ever.get(drop), "finite", problem is None))
        if problem:
            failures.append(f"reject: candidate loss of drop {drop} is {problem}")
    promote = not failures
    summary = (
        f"no champion yet: {'promote' if promote else 'reject'}, {len(rows) - len(failures)} of {len(rows)} "
        "candidate losses usable (regression and forgetting are not checked without a champion)"
    )
    return Decision(promote, [summary, *failures], rows)


def _against_champion(candidate: Candidate, champion: Champion, limits: GateConfig) -> Decision:
    new = candidate.new_drop
    past = [d for d in dict.fromkeys([*candidate.losses, *champion.losses, *candidate.best_ever]) if d != new]
    why = {
        "champion": "",
        "previous": " (no champion yet)",
        "base": " (no champion yet: the model the line started from)",
    }
    reasons = [f"candidate for new drop {new} vs {champion.name}{why[champion.kind]}"]
    rows = [_check_past(drop, candidate, champion, limits, reasons) for drop in past]
    rows.append(_check_new(candidate, champion, limits, reasons))
    promote = all(row["ok"] for row in rows)
    reasons.append(f"verdict: {'promote' if promote else 'reject'} ({sum(not r['ok'] for r in rows)} check(s) failed)")
    return Decision(promote, reasons, rows)


def _check_past(drop: str, cand: Candidate, champ: Champion, limits: GateConfig, reasons: list[str]) -> dict:
    c, h, b = cand.losses.get(drop), champ.losses.get(drop), cand.best_ever.get(drop)
    limit = f"regression <= {limits.max_regression:.2%}, forgetting <= {limits.max_forgetting:.2%}"
    missing = _missing(drop, (("candidate", c, False), (champ.kind, h, True), ("best-ever", b, True)))
    if missing:
        reasons += missing
        return _row(drop, "past", c, h, b, limit, False)
    c, h, b = float(c), float(h), float(b)
    regression, forgetting = (c - h) / h, (c - b) / b
    ok_reg, ok_forg = _at_most(regression, limits.max_regression), _at_most(forgetting, limits.max_forgetting)
    reasons.append(
        f"{_mark(ok_reg)} drop {drop}: loss {c:.4f} vs {champ.kind} {h:.4f} ({regression:+.2%}), "
        f"{'within' if ok_reg else 'above'} the {limits.max_regression:.2%} regression limit"
    )
    reasons.append(
        f"{_mark(ok_forg)} drop {drop}: loss {c:.4f} vs best-ever {b:.4f} ({forgetting:+.2%} forgetting), "
        f"{'within' if ok_forg else 'above'} the {limits.max_forgetting:.2%} limit"
    )
    return _row(drop, "past", c, h, b, limit, ok_reg and ok_forg, regression, forgetting)


def _check_new(cand: Candidate, champ: Champion, limits: GateConfig, reasons: list[str]) -> dict:
    drop = cand.new_drop
    c, h = cand.losses.get(drop), champ.losses.get(drop)
    limit = f"gain >= {limits.min_gain:.2%}"
    missing = _missing(drop, (("candidate", c, False), (champ.kind, h, True)))
    if missing:
        reasons += missing
        return _row(drop, "new", c, h, None, limit, False)
    c, h = float(c), float(h)
    gain = (h - c) / h
    ok = _at_most(-gain, -limits.min_gain)
    reasons.append(
        f"{_mark(ok)} new drop {drop}: loss {c:.4f} vs {champ.kind} {h:.4f} (gain {gain:+.2%}), "
        f"{'meets' if ok else 'below'} the minimum gain {limits.min_gain:.2%}"
    )
    return _row(drop, "new", c, h, None, limit, ok, regression=-gain)


def _missing(drop: str, metrics: tuple[tuple[str, float | None, bool], ...]) -> list[str]:
    """Reasons for every metric of `drop` that a check needs but cannot use."""
    out = []
    for who, value, denominator in metrics:
        problem = _problem(value, denominator)
        if problem:
            out.append(f"reject: {who} loss of drop {drop} is {problem}")
    return out


def _problem(value: Any, denominator: bool) -> str | None:
    """Why a loss cannot be used, or None. A relative change needs a positive denominator."""
    if value is None:
        return "missing"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"not a number ({value!r})"
    if not math.isfinite(x):
        return f"not finite ({x})"
    if x < 0 or (denominator and x == 0):
        return f"out of range ({x}; a loss must be {'> 0 here' if denominator else '>= 0'})"
    return None


def _row(drop, role, cand, champ, best, limit, ok, regression=None, forgetting=None) -> dict[str, Any]:
    return {
        "drop": drop,
        "role": role,
        "candidate": _plain(cand),
        "champion": _plain(champ),
        "best_ever": _plain(best),
        "regression": regression,
        "forgetting": forgetting,
        "limit": limit,
        "ok": bool(ok),
    }


def _at_most(value: float, limit: float) -> bool:
    """value <= limit, forgiving float rounding only (2.10 vs 2.00 is +5% exactly, not +5.000000000000004%)."""
    return value <= limit or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)


def _plain(value: Any) -> Any:
    """Numbers as Python floats (numpy scalars print and serialise badly); anything else as given."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return value


def _mark(ok: bool) -> str:
    return "pass:" if ok else "fail:"


def _verdict(decision: Decision) -> str:
    return "promote" if decision.promote else "reject"


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:+.2%}" if percent and math.isfinite(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")
