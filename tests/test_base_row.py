"""The `(base)` row of a pretrained line: the loss matrix keeps it first, forgetting never counts it as a best-ever
loss, `vs_base` compares the current row with it, the gate's first promotion is judged against it, and line state
files written before it existed still load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.adapters.lines import Line, LineState
from components.core.config import GateConfig
from components.core.metrics import BASE_ROW, LossMatrix, forgetting, vs_base
from components.evaluation.gate import Candidate, Champion, decide
from components.refresh.report import forgetting_history

LIMITS = GateConfig(max_regression=0.05, max_forgetting=0.10, min_gain=0.0)


def pretrained_matrix() -> LossMatrix:
    """Base 3.0 on d1 and 4.0 on d2; training d1 brings it to 2.0, then training d2 forgets d1 up to 2.4."""
    m = LossMatrix().add_row("d1", {"d1": 2.0}).set_base({"d1": 3.0})
    return m.add_row("d2", {"d1": 2.4, "d2": 3.0}).set_base({"d2": 4.0})


def test_the_base_row_is_first_and_filled_per_drop():
    m = LossMatrix().add_row("d1", {"d1": 2.0})
    assert m.base == {} and m.base_lacks(["d1"]) == ["d1"]
    m.set_base({"d1": 3.0})
    assert m.rows == [BASE_ROW, "d1"] and m.base == {"d1": 3.0} and m.base_lacks(["d1"]) == []
    m.add_row("d2", {"d1": 2.4, "d2": 3.0})
    assert m.base_lacks(["d1", "d2"]) == ["d2"]  # a new drop's base cell is unmeasured (NaN) until it is filled
    m.set_base({"d2": 4.0})
    assert m.rows == [BASE_ROW, "d1", "d2"] and m.drops == ["d1", "d2"]
    np.testing.assert_array_equal(m.values, [[3.0, 4.0], [2.0, math.nan], [2.4, 3.0]])
    assert LossMatrix.from_dict(json.loads(json.dumps(m.to_dict()))).base == {"d1": 3.0, "d2": 4.0}


def test_forgetting_counts_from_the_training_row_never_from_the_base():
    m = pretrained_matrix()
    f = forgetting(m)
    # best-ever of d1 is its loss after training it (2.0), not the base's 3.0 (it would hide the forgetting)
    assert f.per_drop == {"d1": pytest.approx(0.4)} and f.relative == {"d1": pytest.approx(0.2)}
    assert f.plasticity == 3.0
    assert f.vs_base == {"d1": pytest.approx((2.4 - 3.0) / 3.0), "d2": pytest.approx((3.0 - 4.0) / 4.0)}
    assert vs_base(LossMatrix().add_row("d1", {"d1": 2.0})) == {}  # a built-in model's line has no base row


def test_vs_base_is_positive_when_the_line_knows_less_than_its_base():
    m = LossMatrix().add_row("d1", {"d1": 2.0}).set_base({"d1": 1.5}).add_row("d2", {"d1": 1.8, "d2": math.inf})
    m.set_base({"d2": 0.0})
    assert m.base == {"d1": 1.5, "d2": 0.0}
    out = vs_base(m)
    assert out["d1"] == pytest.approx(0.2) and math.isnan(out["d2"])  # non-finite now, or a zero base: NaN


def test_a_matrix_with_only_the_base_row_has_no_forgetting_yet():
    with pytest.raises(ValueError, match="only its base row"):
        forgetting(LossMatrix().set_base({"d1": 3.0}))


def test_the_history_has_one_entry_per_refresh_and_compares_each_with_the_base():
    history = forgetting_history(pretrained_matrix())
    assert [row for row, _ in history] == ["d1", "d2"]
    first, second = history[0][1], history[1][1]
    assert first.vs_base == {"d1": pytest.approx(-1 / 3)} and first.per_drop == {}
    assert second.per_drop == {"d1": pytest.approx(0.4)} and set(second.vs_base) == {"d1", "d2"}


BASE = {"d1": 3.0, "d2": 4.0}


@pytest.mark.parametrize(
    ("losses", "best", "promote", "why"),
    [
        ({"d1": 2.9}, {}, True, None),  # first refresh: it only has to gain on the new drop
        ({"d1": 3.3}, {}, False, "below the minimum gain"),  # worse than the model it started from
        ({"d1": 3.0, "d2": 3.5}, {"d1": 2.9}, True, None),  # keeps what the base knew of d1 and gains on d2
        ({"d1": 3.2, "d2": 3.5}, {"d1": 3.1}, False, "regression"),  # +6.7% on d1 against the base: too much
        ({"d1": 3.1, "d2": 3.5}, {"d1": 2.6}, False, "forgetting"),  # within 5% of the base, 19% above its best
    ],
)
def test_the_first_promotion_is_judged_against_the_base(losses, best, promote, why):
    new = list(losses)[-1]
    base = Champion("smol", {d: BASE[d] for d in losses}, "base")  # the base row of the drops trained so far
    decision = decide(Candidate(new, losses, best), base, LIMITS)
    assert decision.promote is promote, decision.reasons
    assert "vs base model smol (no champion yet" in decision.reasons[0]
    assert any("vs base" in r for r in decision.reasons[1:])
    if why:
        assert why in "\n".join(r for r in decision.reasons if r.startswith(("fail", "reject")))
    # the same candidate without a baseline would pass the first-champion rule: the base is what changed it
    assert decide(Candidate(new, losses, best), None, LIMITS).promote


def test_a_missing_base_loss_rejects():
    decision = decide(
        Candidate("d2", {"d1": 2.0, "d2": 3.0}, {"d1": 2.0}), Champion("smol", {"d2": 4.0}, "base"), LIMITS
    )
    assert not decision.promote and "base loss of drop d1 is missing" in "\n".join(decision.reasons)


def test_a_state_file_without_origin_or_base_row_still_loads(tmp_path):
    """A state.json written before the base row and `origin` existed (as main wrote it) loads unchanged."""
    old = {
        "trained": ["d1"],
        "versions": {"d1": 3},
        "model": "models/d1",
        "sampler": None,
        "arm_ref": {"d1": 2.5},
        "history": [{"drop_id": "d1"}],
        "loss_matrix": {"drops": ["d1"], "rows": ["d1"], "values": [[2.0]]},
        "rolled_back_to": None,
        "progress": {},
    }
    root = tmp_path / "lines" / "main"
    root.mkdir(parents=True)
    (root / "state.json").write_text(json.dumps(old))
    line = Line(tmp_path, "main")
    assert line.state.origin is None and line.matrix.base == {} and line.trained == ["d1"]
    line.commit_evaluation(line.matrix.set_base({"d1": 3.0}), {})
    assert LineState.load(root / "state.json").loss_matrix["rows"] == [BASE_ROW, "d1"]
