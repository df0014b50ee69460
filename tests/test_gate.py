"""The gate's pure decision: one table row per branch, plus the report it renders."""

from __future__ import annotations

import math

import pytest

from components.core.config import GateConfig
from components.evaluation.gate import Candidate, Champion, Decision, decide, override

NAN, INF = math.nan, math.inf
LIMITS = GateConfig(max_regression=0.05, max_forgetting=0.10, min_gain=0.02)

# Champion re-evaluated now on d1, d2 (past) and d3 (the new drop); the line's best-ever losses on d1, d2.
CHAMP = {"d1": 2.00, "d2": 3.00, "d3": 4.00}
BEST = {"d1": 1.90, "d2": 2.90}

CASES = [
    # id, candidate losses, champion losses (None: no champion), best-ever, promote, words in a failing reason
    ("promote", {"d1": 2.04, "d2": 3.00, "d3": 3.50}, CHAMP, BEST, True, None),
    ("promote-at-exact-limits", {"d1": 2.10, "d2": 3.15, "d3": 3.92}, CHAMP, {"d1": 2.0, "d2": 3.0}, True, None),
    ("regression", {"d1": 2.20, "d2": 3.00, "d3": 3.50}, CHAMP, {"d1": 2.10, "d2": 2.90}, False, "regression"),
    ("forgetting", {"d1": 2.09, "d2": 3.00, "d3": 3.50}, CHAMP, {"d1": 1.80, "d2": 2.90}, False, "forgetting"),
    ("gain-too-small", {"d1": 2.00, "d2": 3.00, "d3": 3.95}, CHAMP, BEST, False, "minimum gain"),
    ("new-drop-worse", {"d1": 2.00, "d2": 3.00, "d3": 4.40}, CHAMP, BEST, False, "minimum gain"),
    ("no-champion-finite", {"d1": 2.5, "d3": 3.0}, None, {"d1": 1.0}, True, None),
    ("no-champion-nan", {"d1": NAN, "d3": 3.0}, None, {}, False, "candidate loss of drop d1 is not finite"),
    ("no-champion-inf", {"d3": INF}, None, {}, False, "candidate loss of drop d3 is not finite"),
    ("no-champion-empty", {}, None, {}, False, "no held-out loss"),
    ("no-champion-new-missing", {"d1": 2.0}, None, {}, False, "new drop d3 is missing"),
    ("candidate-nan-past", {"d1": NAN, "d2": 3.0, "d3": 3.5}, CHAMP, BEST, False, "candidate loss of drop d1"),
    ("candidate-missing-past", {"d2": 3.0, "d3": 3.5}, CHAMP, BEST, False, "candidate loss of drop d1 is missing"),
    ("candidate-missing-new", {"d1": 2.0, "d2": 3.0}, CHAMP, BEST, False, "candidate loss of drop d3 is missing"),
    (
        "champion-missing",
        {"d1": 2.0, "d2": 3.0, "d3": 3.5},
        {"d1": 2.0, "d3": 4.0},
        BEST,
        False,
        "champion loss of drop d2",
    ),
    (
        "champion-nan-new",
        {"d1": 2.0, "d2": 3.0, "d3": 3.5},
        CHAMP | {"d3": NAN},
        BEST,
        False,
        "champion loss of drop d3",
    ),
    ("champion-zero", {"d1": 2.0, "d2": 3.0, "d3": 3.5}, CHAMP | {"d1": 0.0}, BEST, False, "out of range"),
    ("best-ever-missing", {"d1": 2.0, "d2": 3.0, "d3": 3.5}, CHAMP, {"d1": 1.9}, False, "best-ever loss of drop d2"),
    ("best-ever-inf", {"d1": 2.0, "d2": 3.0, "d3": 3.5}, CHAMP, BEST | {"d2": INF}, False, "best-ever loss of drop d2"),
    ("negative-loss", {"d1": -1.0, "d2": 3.0, "d3": 3.5}, CHAMP, BEST, False, "out of range"),
    ("not-a-number", {"d1": "2.0x", "d2": 3.0, "d3": 3.5}, CHAMP, BEST, False, "not a number"),
]


@pytest.mark.parametrize(
    ("losses", "champ", "best", "promote", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(losses, champ, best, promote, why):
    champion = None if champ is None else Champion("7", champ)
    decision = decide(Candidate("d3", losses, best), champion, LIMITS)
    assert decision.promote is promote
    text = "\n".join(decision.reasons)
    if promote:
        assert not any(r.startswith(("fail:", "reject:")) for r in decision.reasons), text
        assert all(row["ok"] for row in decision.rows)
    else:
        assert why in text, text
        assert any(r.startswith(("fail:", "reject:")) for r in decision.reasons)
    if champion is not None:
        assert "champion version 7" in decision.reasons[0]
        assert decision.reasons[-1].startswith(f"verdict: {'promote' if promote else 'reject'}")


def test_every_check_leaves_a_reason_and_a_row_with_the_numbers():
    decision = decide(
        Candidate("d3", {"d1": 2.2, "d2": 3.0, "d3": 3.5}, {"d1": 2.1, "d2": 2.9}), Champion("1", CHAMP), LIMITS
    )
    rows = {row["drop"]: row for row in decision.rows}
    assert [r["drop"] for r in decision.rows] == ["d1", "d2", "d3"]  # past drops first, the new drop last
    assert rows["d1"]["regression"] == pytest.approx(0.10) and rows["d1"]["ok"] is False
    assert rows["d1"]["forgetting"] == pytest.approx(0.1 / 2.1)
    assert rows["d2"]["ok"] is True and rows["d2"]["forgetting"] == pytest.approx(0.1 / 2.9)
    assert rows["d3"]["role"] == "new" and rows["d3"]["regression"] == pytest.approx(-0.125)
    assert any("drop d1" in r and "+10.00%" in r and "above the 5.00% regression limit" in r for r in decision.reasons)
    assert any("d2" in r and "pass:" in r and "forgetting" in r for r in decision.reasons)
    assert any("new drop d3" in r and "gain +12.50%" in r for r in decision.reasons)
    # two checks per past drop, one for the new drop, plus the header and the verdict
    assert len(decision.reasons) == 2 * 2 + 1 + 2


def test_nan_threshold_fails_closed():
    decision = decide(Candidate("d1", {"d1": 1.0}), None, GateConfig(min_gain=NAN))
    assert not decision.promote and "min_gain" in decision.reasons[0]


def test_inputs_are_not_changed_and_the_decision_is_repeatable():
    losses, best = {"d1": 2.04, "d2": 3.0, "d3": 3.5}, dict(BEST)
    first = decide(Candidate("d3", losses, best), Champion("7", CHAMP), LIMITS)
    again = decide(Candidate("d3", dict(losses), dict(best)), Champion("7", dict(CHAMP)), LIMITS)
    assert first == again
    assert losses == {"d1": 2.04, "d2": 3.0, "d3": 3.5} and best == BEST


def test_markdown_report_has_verdict_table_and_reasons():
    decision = decide(Candidate("d3", {"d1": 2.2, "d2": NAN, "d3": 3.5}, BEST), Champion("7", CHAMP), LIMITS)
    md = decision.to_markdown()
    assert md.startswith("## Gate: REJECT")
    header = next(line for line in md.splitlines() if line.startswith("| drop"))
    assert header.split("|")[1:-1] == [
        f" {c} "
        for c in ("drop", "role", "candidate", "champion", "best_ever", "regression", "forgetting", "limit", "ok")
    ]
    d1 = next(line for line in md.splitlines() if line.startswith("| d1 |"))
    assert "2.2000" in d1 and "+10.00%" in d1 and "**no**" in d1
    d2 = next(line for line in md.splitlines() if line.startswith("| d2 |"))
    assert "nan" in d2 and "**no**" in d2
    assert all(f"- {r}" in md for r in decision.reasons)
    assert decide(Candidate("d1", {"d1": 1.0}), None, LIMITS).to_markdown().startswith("## Gate: PROMOTE")


def test_manual_override_keeps_what_the_gate_said():
    rejected = decide(Candidate("d3", {"d1": 9.0, "d2": 3.0, "d3": 3.5}, BEST), Champion("7", CHAMP), LIMITS)
    forced = override(rejected, "hotfix approved by on-call")
    assert isinstance(forced, Decision) and forced.promote
    assert forced.reasons[0] == "manual override: hotfix approved by on-call (the gate said reject)"
    assert forced.reasons[1:] == rejected.reasons and forced.rows == rejected.rows
    assert override(None, "").reasons == ["manual override: no note given (no gate decision was recorded)"]


DIVERGED = [
    # id, candidate (with nonfinite counts and the uniform-guess loss), champion, words in a failing reason
    ("nonfinite-sequences", Candidate("d3", {"d1": 2.0, "d3": 3.0}, {}, {"d1": 3}), None, "3 held-out sequence(s)"),
    ("above-uniform-no-champion", Candidate("d3", {"d1": 5.5e6, "d3": 3.0}, {}, {}, math.log(256)), None, "d1 is"),
    ("above-uniform-vs-champion", Candidate("d3", {"d1": 2.0, "d2": 3.0, "d3": 6.0}, BEST, {}, 5.0), CHAMP, "d3"),
]


@pytest.mark.parametrize(("candidate", "champ", "why"), [c[1:] for c in DIVERGED], ids=[c[0] for c in DIVERGED])
def test_a_diverged_candidate_is_rejected_with_or_without_a_champion(candidate, champ, why):
    decision = decide(candidate, Champion("1", champ) if champ else None, LIMITS)
    assert not decision.promote
    assert any("diverged" in r and why in r for r in decision.reasons), decision.reasons


def test_losses_below_the_uniform_guess_are_not_divergence():
    ok = Candidate("d3", {"d1": 2.0, "d3": 3.0}, {}, {"d1": 0}, math.log(256))
    assert decide(ok, None, LIMITS).promote
