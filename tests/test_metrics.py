"""Forgetting metrics on hand-built loss matrices, and the written artifacts."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from components.core.files import atomic_write
from components.core.metrics import LossMatrix, forgetting, write_matrix_artifacts

NAN = math.nan


def three_by_three() -> LossMatrix:
    """After d1: d1=2.0. After d2: d1=1.8 (improved), d2=3.0. After d3: d1=2.4, d2=2.9 (better), d3=2.5."""
    m = LossMatrix()
    m.add_row("d1", {"d1": 2.0})
    m.add_row("d2", {"d1": 1.8, "d2": 3.0})
    return m.add_row("d3", {"d1": 2.4, "d2": 2.9, "d3": 2.5})


def test_add_row_grows_columns_with_nan_above():
    m = three_by_three()
    assert m.drops == ["d1", "d2", "d3"] and m.rows == ["d1", "d2", "d3"]
    expected = [[2.0, NAN, NAN], [1.8, 3.0, NAN], [2.4, 2.9, 2.5]]
    np.testing.assert_array_equal(m.values, np.array(expected))
    with pytest.raises(ValueError, match="already has a row"):
        m.add_row("d2", {"d1": 1.0})


def test_forgetting_on_a_hand_built_matrix():
    f = forgetting(three_by_three())
    # d1: now 2.4, best of rows d1..d2 = 1.8 -> 0.6; d2: now 2.9 < best 3.0 -> clamped to 0
    assert f.per_drop == pytest.approx({"d1": 0.6, "d2": 0.0})
    assert f.relative == pytest.approx({"d1": 0.6 / 1.8, "d2": 0.0})
    assert f.avg == pytest.approx(0.3) and f.max == pytest.approx(0.6)
    assert f.rel_avg == pytest.approx(0.6 / 1.8 / 2)
    assert f.plasticity == pytest.approx(2.5)
    assert "d3" not in f.per_drop  # the drop just trained is plasticity, not forgetting


def test_single_row_has_no_past_drops():
    f = forgetting(LossMatrix().add_row("d1", {"d1": 3.1}))
    assert f.per_drop == {} and f.avg == 0.0 and f.max == 0.0 and f.rel_avg == 0.0
    assert f.plasticity == pytest.approx(3.1)
    with pytest.raises(ValueError, match="empty"):
        forgetting(LossMatrix())


def test_rows_before_training_a_drop_do_not_count_as_its_best():
    m = LossMatrix()
    m.add_row("d1", {"d1": 2.0, "d2": 1.0})  # d2 measured before it was trained: not its baseline
    m.add_row("d2", {"d1": 2.1, "d2": 1.5})
    m.add_row("d3", {"d1": 2.2, "d2": 1.7, "d3": 2.0})
    f = forgetting(m)
    assert f.per_drop == pytest.approx({"d1": 0.2, "d2": 0.2})


def test_missing_measurement_is_nan_not_zero():
    m = three_by_three()
    m.add_row("d4", {"d2": 3.5, "d3": 2.6, "d4": 2.2})  # d1 not evaluated now
    f = forgetting(m)
    assert math.isnan(f.per_drop["d1"]) and math.isnan(f.avg)
    assert f.per_drop["d2"] == pytest.approx(0.6) and f.per_drop["d3"] == pytest.approx(0.1)


def test_json_round_trip_keeps_nan_as_null():
    m = three_by_three()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["values"][0] == [2.0, None, None]
    back = LossMatrix.from_dict(d)
    assert back.drops == m.drops and back.rows == m.rows
    np.testing.assert_array_equal(back.values, m.values)


def test_artifacts_written_and_csv_parses_back(tmp_path):
    m = three_by_three()
    paths = write_matrix_artifacts(m, tmp_path / "eval")
    assert {p.name for p in paths.values()} == {"loss_matrix.json", "loss_matrix.csv", "loss_matrix.png"}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(p.name for p in paths.values())
    with paths["csv"].open(newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["after", "d1", "d2", "d3"]
    assert [r[0] for r in table[1:]] == m.rows
    parsed = np.array([[float(x) if x else NAN for x in r[1:]] for r in table[1:]])
    np.testing.assert_array_equal(parsed, m.values)
    assert LossMatrix.from_dict(json.loads(paths["json"].read_text())).rows == m.rows
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    write_matrix_artifacts(m.add_row("d4", {"d4": 2.0}), tmp_path / "eval")  # overwrite in place
    assert paths["csv"].read_text().count("\n") == 5


def test_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "loss_matrix.json"
    target.write_text("previous")

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["loss_matrix.json"]
