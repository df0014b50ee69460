"""A line's state is typed: a corrupted or hand-edited `state.json` fails with the file, the field and the fix,
and changes nothing; a valid state (including one written before the typed model) loads as it was."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.adapters.lines import Line, LineState, LineStateError
from components.adapters.memory import Memory
from components.cli import app
from components.ingest import ingest_source
from components.training.loop import train_drop
from tests.helpers import settings_for, three_drops


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A home whose line `main` has really trained one drop (2 steps)."""
    home = tmp_path_factory.mktemp("home")
    cfg = settings_for(home, **{"train.max_steps": 2, "train.batch_size": 4})
    three_drops(home / "drops")
    ingest_source(cfg, str(home / "drops"), show_progress=False)
    train_drop(cfg, Memory.open(cfg), Line(home, "main"), "d1-code")
    return home


def _edit(key: str, value) -> Callable[[str], str]:
    def apply(text: str) -> str:
        data = json.loads(text)
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
        return json.dumps(data)

    return apply


CASES = {
    "garbage bytes": (lambda text: "\x00\x01{garbage", r"state\.json:1:1: not valid JSON"),
    "truncated": (lambda text: text[: len(text) // 2], r"state\.json:\d+:\d+: not valid JSON"),
    "not UTF-8": (lambda text: "\udcff", r"not UTF-8"),
    "model path escapes the line": (_edit("model", "../../../etc"), r"field `model`: .*models/<drop id>"),
    "model of an untrained drop": (_edit("model", "models/d9"), r"model 'models/d9' is of a drop"),
    "misspelt field": (_edit("trainde", []), r"field `trainde`: Extra inputs"),
    "version missing": (_edit("versions", {}), r"versions has drops \[\] but trained lists \['d1-code'\]"),
    "version not a number": (_edit("versions", {"d1-code": "two"}), r"field `versions.d1-code`"),
    "drop id with a slash": (_edit("trained", ["../x"]), r"field `trained`: .*not drop ids"),
    "loss matrix of the wrong shape": (
        _edit("loss_matrix", {"drops": ["a"], "rows": ["a"], "values": [[1.0, 2.0]]}),
        r"field `loss_matrix`",
    ),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock files (the commands take the home's writer lock before they fail)."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "locks")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_corrupted_state_fails_clearly_and_changes_nothing(trained, tmp_path, monkeypatch, case):
    corrupt, message = CASES[case]
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    state = home / "lines" / "main" / "state.json"
    text = corrupt(state.read_text())
    state.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = _snapshot(home)

    with pytest.raises(LineStateError, match=message) as info:
        Line(home, "main")
    assert str(state) in str(info.value) and "Fix: restore it from" in str(info.value)

    monkeypatch.setenv("AMR_HOME", str(home))
    for command in (["train", "--line", "main"], ["evaluate", "--line", "main"]):
        res = CliRunner().invoke(app, command)
        assert res.exit_code == 1, res.output
        said = res.output.replace("\n", "")  # rich wraps long lines
        assert str(state) in said and "Fix:" in said and "Traceback" not in said
    assert _snapshot(home) == before  # nothing written, nothing removed


def test_a_valid_state_round_trips_and_the_pre_typed_format_loads(trained, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    state = home / "lines" / "main" / "state.json"
    data = json.loads(state.read_text())
    line = Line(home, "main")
    assert line.trained == ["d1-code"] and line.model_dir == home / "lines" / "main" / "models" / "d1-code"
    assert line.state.model_dump() == data
    old = {k: v for k, v in data.items() if k != "rolled_back_to"}  # what main wrote before the typed state
    state.write_text(json.dumps(old))
    assert Line(home, "main").state == LineState.model_validate(data)
    line.commit_evaluation(line.matrix, {"d1-code/0": math.nan, "d1-code": 2.5})  # an arm with no finite probe
    assert math.isnan(Line(home, "main").state.arm_ref["d1-code/0"])


def test_the_rollback_note_is_handed_over_once(trained, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    line = Line(home, "main")
    assert line.rollback_note is None
    line.mark_rolled_back("data-v1 (abc, memory version 3)")
    again = Line(home, "main")
    assert again.rollback_note == "data-v1 (abc, memory version 3)"
    again.clear_rollback_note()
    assert Line(home, "main").rollback_note is None


def test_best_ever_arm_reference_survives_later_evaluations(trained, tmp_path):
    """`arm_ref_best` keeps each arm's lowest finite probe loss; the sampler gets it under reference=best and the
    latest one under reference=last (issue 12: a per-evaluation reset made amr chase the drop trained last)."""
    from components.training.planner import build_line_sampler

    home = tmp_path / "home"
    shutil.copytree(trained, home)
    line = Line(home, "main")
    line.commit_evaluation(line.matrix, {"d1-code": 2.0, "d1-code/0": math.nan})
    line.commit_evaluation(line.matrix, {"d1-code": 2.6, "d1-code/0": 3.0, "d1-code/1": 2.2})
    line.commit_evaluation(line.matrix, {"d1-code": 2.4, "d1-code/0": math.nan})
    reopened = Line(home, "main")
    assert reopened.state.arm_ref_best == {"d1-code": 2.0, "d1-code/0": 3.0, "d1-code/1": 2.2}
    assert reopened.arm_reference("last") == {"d1-code": 2.4, "d1-code/0": pytest.approx(math.nan, nan_ok=True)}
    cfg = settings_for(home, **{"replay.arms": "drop"})
    index = Memory.open(cfg).index()
    best = build_line_sampler(cfg, index, reopened, "amr", 0)
    assert best.reference.tolist() == [2.0]
    cfg_last = settings_for(home, **{"replay.arms": "drop", "replay.reference": "last"})
    assert build_line_sampler(cfg_last, index, reopened, "amr", 0).reference.tolist() == [2.4]
