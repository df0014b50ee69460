"""Training with replay on a real memory: the equal-compute budget, resume after SIGKILL, the bandit's behaviour."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.replay import build_arms, build_sampler
from components.evaluation import evaluate_line
from components.ingest import ingest_source
from components.training.loop import train_drop
from components.training.planner import NewDataCursor, plan_budget
from tests.helpers import jsonl, license_docs, make_drop, python_docs, settings_for, three_drops

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train.n_layer": 1,
    "train.n_embd": 32,
    "train.n_head": 2,
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.max_steps": 6,
    "ingest.context_length": 64,
    # the bandit path these tests were written for (params.yaml ships balanced, 0.125, drop arms, floor 0.3)
    "replay.strategy": "amr",
    "replay.replay_fraction": 0.25,
    "replay.arms": "cluster",
    "replay.uniform_floor": 0.0,
}

pytestmark = pytest.mark.slow


def tiny(home: Path, **extra):
    return settings_for(home, **(TINY | extra))


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    three_drops(root)
    return root


def weights(line: Line) -> dict[str, np.ndarray]:
    return load_file(str(line.model_dir / "model.safetensors"))


def test_budget_is_identical_for_every_strategy(tmp_path, stream):
    seen = {}
    for strategy in ("none", "uniform", "balanced", "amr"):
        cfg = tiny(tmp_path / strategy)
        ingest_source(cfg, str(stream), show_progress=False)
        memory, line = Memory.open(cfg), Line(cfg.home, "l")
        results = [train_drop(cfg, memory, line, d, strategy) for d in memory.ingested()]
        seen[strategy] = [(r.steps, r.sequences) for r in results]
        assert all(r.new_sequences + r.replay_sequences == r.sequences for r in results)
        assert results[0].replay_sequences == 0  # nothing to replay before the second drop
        expected_replay = 0 if strategy == "none" else 6 * round(cfg.replay.replay_fraction * 8)
        assert [r.replay_sequences for r in results[1:]] == [expected_replay] * 2
        if strategy != "none":
            assert sum(results[2].replay_by_drop.values()) == expected_replay
            assert set(results[2].replay_by_drop) <= {"d1-code", "d2-licenses"}
    assert len({tuple(v) for v in seen.values()}) == 1, seen


def test_plan_budget_follows_epochs_and_cap(tmp_path):
    cfg = tiny(
        tmp_path,
        **{"train.max_steps": None, "train.epochs": 2.0, "train.batch_size": 10, "replay.replay_fraction": 0.25},
    )
    assert plan_budget(95, cfg, replaying=False).steps == 19
    b = plan_budget(95, cfg, replaying=True)
    assert (b.steps, b.n_new, b.n_replay, b.sequences) == (19, 8, 2, 190)
    cfg.train.max_steps = 5
    assert plan_budget(95, cfg, replaying=True).steps == 5
    with pytest.raises(ValueError, match="no new-data slot"):
        plan_budget(95, cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"replay_fraction": 1.0})}), True)


def test_cursor_resumes_and_reshuffles():
    cursor = NewDataCursor(np.arange(10, dtype=np.uint64), seed=3)
    first = cursor.next(7)
    state = cursor.state_dict()
    rest = cursor.next(8)
    again = NewDataCursor(np.arange(10, dtype=np.uint64), seed=3)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert np.array_equal(again.next(8), rest)
    assert sorted(np.concatenate([first, rest[:3]]).tolist()) == list(range(10))  # one epoch covers every row once


def test_sampler_state_survives_the_line_round_trip(tmp_path, stream):
    cfg = tiny(tmp_path / "h")
    ingest_source(cfg, str(stream), show_progress=False)
    memory, line = Memory.open(cfg), Line(cfg.home, "l")
    for d in memory.ingested()[:2]:
        train_drop(cfg, memory, line, d, "amr")
        evaluate_line(cfg, memory, line)
    state = Line(cfg.home, "l").state.sampler
    arms = build_arms(memory.index(), ["d1-code"], "cluster")
    a, b = build_sampler(cfg.replay, arms), build_sampler(cfg.replay, arms)
    a.load_state_dict(state)
    b.load_state_dict(json.loads(json.dumps(state)))
    assert np.allclose(a.probabilities(), b.probabilities())
    assert np.array_equal(a.sample(32)[0], b.sample(32)[0])
    assert state["step"] == 6 and any(q != 0 for q in state["q"])


def _train_cmd(home: Path) -> list[str]:
    return [sys.executable, "-m", "components.cli", "train", "--strategy", "amr"]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, stream):
    extra = {"train.max_steps": 40, "train.checkpoint_every": 4}
    runs = {}
    for name in ("straight", "killed"):
        cfg = tiny(tmp_path / name, **extra)
        ingest_source(cfg, str(stream), show_progress=False)
        memory, line = Memory.open(cfg), Line(cfg.home, "main")
        train_drop(cfg, memory, line, "d1-code", "amr")
        evaluate_line(cfg, memory, line)
        runs[name] = cfg
    straight = runs["straight"]
    result = train_drop(straight, Memory.open(straight), Line(straight.home, "main"), "d2-licenses", "amr")
    assert result.resumed_from_step == 0

    killed = runs["killed"]
    env = dict(
        os.environ,
        AMR_HOME=str(killed.home),
        PYTHONPATH=str(ROOT),
        # the CLI runs outside the repo (no params.yaml there): the replay settings the in-process runs used
        **{f"AMR_REPLAY__{k.upper()}": str(v) for k, v in straight.replay.model_dump().items()}
        | {f"AMR_{k.replace('.', '__').upper()}": str(v) for k, v in (TINY | extra).items()},
    )
    proc = subprocess.Popen(
        _train_cmd(killed.home), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpts = killed.home / "lines" / "main" / "checkpoints" / "d2-licenses"
    deadline = time.monotonic() + 120
    while not any(ckpts.glob("step-*/state.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(ckpts.glob("step-*/state.json")), proc.stderr.read().decode()[-2000:]
    line = Line(killed.home, "main")
    assert line.trained == ["d1-code"]  # the killed run committed nothing
    resumed = train_drop(killed, Memory.open(killed), line, "d2-licenses", "amr")
    assert resumed.resumed_from_step > 0
    a, b = weights(Line(straight.home, "main")), weights(Line(killed.home, "main"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sa, sb = Line(straight.home, "main").state.sampler, Line(killed.home, "main").state.sampler
    assert sa == sb


def test_amr_moves_probability_toward_the_arm_being_forgotten(tmp_path):
    """Code is learnt, then licence text; more licence-like text forgets code, not licences: amr replays code more."""
    root = tmp_path / "drops"
    make_drop(root, "a-code", {"c.jsonl": jsonl([t[:4000] for t in python_docs(40)])})
    make_drop(root, "b-english", {"e.jsonl": jsonl([t[:4000] for t in license_docs(8)])})
    make_drop(root, "c-english", {"e.jsonl": jsonl([t[4000:8000] for t in license_docs(8)])})
    cfg = tiny(
        tmp_path / "h", **{"train.lr": 3e-3, "train.n_embd": 64, "replay.arms": "drop", "replay.prefetch_batches": 1}
    )
    ingest_source(cfg, str(root), show_progress=False)
    memory, line = Memory.open(cfg), Line(cfg.home, "main")
    for drop, steps in (("a-code", 120), ("b-english", 60)):
        cfg.train.max_steps = steps
        train_drop(cfg, memory, line, drop, "none")
        evaluate_line(cfg, memory, line)
    code_after_english = line.matrix.loss("b-english", "a-code")
    assert code_after_english > line.matrix.loss("a-code", "a-code")  # learning English did forget code
    result = train_drop(cfg, memory, line, "c-english", "amr")
    probs = np.array(result.arm_probabilities)
    assert result.arm_keys == ["a-code", "b-english"]
    # Started at 0.5 each. Which rows a seeded run trains on changed with the write order (train rows grouped by
    # cluster, issue 11 item 3): the code arm's lead late in the run is smaller now, so the run is judged as a whole.
    assert (probs[:, 0] > 0.5).all() and probs[:, 0].mean() > 0.6, probs
    assert result.replay_by_drop["a-code"] > result.replay_by_drop["b-english"]


def test_bench_command_writes_the_report(tmp_path, stream, monkeypatch):
    from components.cli import app

    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    for key, value in (TINY | {"train.max_steps": 3}).items():
        monkeypatch.setenv(f"AMR_{key.replace('.', '__').upper()}", str(value))
    out = tmp_path / "report" / "f.json"
    out.parent.mkdir()
    args = ["bench", "forgetting", str(stream), "--strategies", "none,uniform,amr", "--seeds", "0,1", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert set(report) >= {"config", "strategies", "runs", "paired"}
    assert report["config"]["drops"] == ["d1-code", "d2-licenses", "d3-docs"] and report["config"]["seeds"] == [0, 1]
    assert len(report["runs"]) == 2
    for seed_run in report["runs"]:
        first = [r["shared_first_drop"] for r in seed_run.values()]
        assert len({json.dumps(f, sort_keys=True) for f in first}) == 1  # drop 1 trained once, shared
        for r in seed_run.values():
            assert r["sequences"] == 2 * 3 * 8 and len(r["loss_matrix"]["rows"]) == 3  # drops 2 and 3
            assert len(r["refreshes"]) == 2 and r["cpu_seconds"] > 0
    runs = report["runs"]
    slots = round(report["config"]["replay"]["replay_fraction"] * 8)  # replay slots of a batch of 8
    assert runs[0]["none"]["replay_sequences"] == 0 and runs[0]["amr"]["replay_sequences"] == slots * 3 * 2
    assert runs[0]["amr"]["loss_matrix"] != runs[1]["amr"]["loss_matrix"]  # the seeds differ
    mean = report["strategies"]["amr"]
    assert mean["avg_forgetting"] == pytest.approx(
        (runs[0]["amr"]["avg_forgetting"] + runs[1]["amr"]["avg_forgetting"]) / 2
    )
    diff = report["paired"]["amr - uniform avg_forgetting"]
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(
        sum(r["amr"]["avg_forgetting"] - r["uniform"]["avg_forgetting"] for r in runs) / 2
    )
    assert out.with_suffix(".md").read_text().startswith("| strategy |")
    assert out.with_suffix(".png").stat().st_size > 1000
