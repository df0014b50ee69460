"""`amr bench forgetting`'s arithmetic: strategy variants, mean and spread per strategy, seed-paired differences."""

from __future__ import annotations

import pytest

from components.core.config import load_settings
from components.refresh.bench import paired, summarize, variant


def run(avg: float, mx: float, per_drop: dict[str, float], cpu: float = 10.0) -> dict:
    return {
        "avg_forgetting": avg,
        "max_forgetting": mx,
        "rel_avg_forgetting": avg / 2,
        "final_new_loss": 2.0,
        "wall_seconds": cpu + 1,
        "cpu_seconds": cpu,
        "forgetting_per_drop": per_drop,
        "drops": ["d1", "d2", "d3"],
    }


RUNS = [  # three seeds of two strategies
    {"uniform": run(0.10, 0.20, {"d1": 0.0, "d2": 0.2}), "amr": run(0.08, 0.12, {"d1": 0.04, "d2": 0.12})},
    {"uniform": run(0.20, 0.30, {"d1": 0.1, "d2": 0.3}), "amr": run(0.21, 0.25, {"d1": 0.17, "d2": 0.25})},
    {"uniform": run(0.12, 0.20, {"d1": 0.04, "d2": 0.2}), "amr": run(0.10, 0.15, {"d1": 0.05, "d2": 0.15})},
]


def test_summary_mean_and_sample_sd_by_hand():
    s = summarize(RUNS)
    assert s["uniform"]["avg_forgetting"] == pytest.approx(0.14)
    # deviations -0.04, 0.06, -0.02: sum of squares 0.0056, / (n - 1) = 0.0028
    assert s["uniform"]["sd"]["avg_forgetting"] == pytest.approx(0.0028**0.5)
    assert s["amr"]["max_forgetting"] == pytest.approx((0.12 + 0.25 + 0.15) / 3)
    assert s["amr"]["forgetting_per_drop"] == pytest.approx({"d1": 0.26 / 3, "d2": 0.52 / 3})
    assert s["amr"]["n"] == 3 and s["amr"]["drops"] == ["d1", "d2", "d3"]
    assert summarize(RUNS[:1])["amr"]["sd"]["avg_forgetting"] == 0.0  # one run: no spread, not NaN


def test_paired_difference_by_hand():
    d = paired(RUNS, "amr", "uniform")
    assert d["diffs"] == pytest.approx([-0.02, 0.01, -0.02])
    assert d["mean"] == pytest.approx(-0.01)
    assert d["sd"] == pytest.approx(((0.01**2 + 0.02**2 + 0.01**2) / 2) ** 0.5)
    assert d["ratio_mean"] == pytest.approx((0.8 + 1.05 + 0.1 / 0.12) / 3)
    # pairing removes the seed effect: seed 2 is harder for both, the unpaired sds are far larger than the paired
    s = summarize(RUNS)
    assert d["sd"] < s["amr"]["sd"]["avg_forgetting"] / 3
    assert paired(RUNS, "amr", "uniform", "max_forgetting")["mean"] == pytest.approx((-0.08 - 0.05 - 0.05) / 3)


def test_variants_override_replay_keys_and_bad_ones_name_the_fix():
    settings = load_settings(None)
    before = settings.replay.model_dump()
    cfg, base = variant(settings, "amr+uniform_floor=0.55+reference=last")
    assert base == "amr" and cfg.replay.uniform_floor == 0.55 and cfg.replay.reference == "last"
    assert cfg.replay.strategy == "amr" and settings.replay.model_dump() == before  # the original is untouched
    assert variant(settings, "odm")[1] == "odm"
    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        variant(settings, "greedy")
    with pytest.raises(ValueError, match="'floor=0.3' is not key=value of a replay"):
        variant(settings, "amr+floor=0.3")
    with pytest.raises(ValueError, match="amr\\+uniform_floor=2.*fix the value"):
        variant(settings, "amr+uniform_floor=2")
