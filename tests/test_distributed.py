"""Data-parallel training under torchrun on CPU (gloo): two ranks against one process, on a real memory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.numpy import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from components.adapters.lines import Line, LineState
from components.adapters.memory import Memory
from components.core.replay import build_arms, build_sampler
from components.ingest import ingest_source
from components.refresh import steps as refresh
from components.training.launcher import launch
from components.training.loop import train_drop
from components.training.model import load_model, save_model
from components.training.ranks import bandit_digest, local_slots, rank_rng, weights_digest
from tests.helpers import settings_for, three_drops

TINY = {
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.max_steps": 6,
    "train.checkpoint_every": 2,
    "ingest.context_length": 64,
    "replay.replay_fraction": 0.25,  # 2 replay slots of 8, one per rank (params.yaml ships 0.125)
}


def dropout_free_model(path: Path, meta: dict) -> Path:
    """A tiny GPT-2 without dropout, so that one process and two ranks must compute the same thing."""
    config = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=meta["context_length"],
        vocab_size=meta["vocab_size"],
        bos_token_id=meta["eos_id"],
        eos_token_id=meta["eos_id"],
        pad_token_id=meta["pad_id"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    save_model(GPT2LMHeadModel(config), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """d1 in one process; d2 (`none`) by `amr train --nproc 2` and by one process; d3 (`amr`) by the flow's step."""
    root = tmp_path_factory.mktemp("ddp")
    three_drops(root / "drops")
    home = root / "home"
    cfg = settings_for(home, **TINY)
    ingest_source(cfg, str(root / "drops"), show_progress=False)
    cfg.train.model = str(dropout_free_model(root / "model", Memory.open(cfg).meta()))
    train_drop(cfg, Memory.open(cfg), Line(home, "main"), "d1-code", "none")

    single = settings_for(root / "single", **TINY | {"train.model": cfg.train.model})
    shutil.copytree(home, single.home)
    one = train_drop(single, Memory.open(single), Line(single.home, "main"), "d2-licenses", "none")

    env = {f"AMR_{k.replace('.', '__').upper()}": str(v) for k, v in TINY.items()}
    env |= {"AMR_HOME": str(home), "AMR_TRAIN__MODEL": cfg.train.model, "AMR_INGEST__CLUSTERS_PER_DROP": "2"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from components.cli import app

        cli = CliRunner().invoke(app, ["train", "--drop", "d2-licenses", "--strategy", "none", "--nproc", "2"])
        assert cli.exit_code == 0, cli.output

        flow = settings_for(home, **TINY | {"train.nproc": 2, "train.grad_accum": 2, "replay.strategy": "amr"})
        flow.train.model = cfg.train.model
        line = Line(home, "main")
        run_id = refresh.open_run(flow, line, "d3-docs")
        result = refresh.train_step(flow, line, "d3-docs", run_id)
        losses = MlflowClient().get_metric_history(run_id, "train/loss")
    return SimpleNamespace(home=home, single=single.home, one=one, cli=cli, flow=flow, result=result, losses=losses)


def d2_weights(home: Path) -> dict[str, np.ndarray]:
    return load_file(str(Line(home, "main").root / "models" / "d2-licenses" / "model.safetensors"))


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains(runs):
    history = Line(runs.home, "main").state.history
    d2 = history[1]
    assert d2["drop_id"] == "d2-licenses" and d2["world_size"] == 2
    assert (d2["steps"], d2["sequences"]) == (runs.one.steps, runs.one.sequences) == (6, 48)
    assert sum(r["new_sequences"] + r["replay_sequences"] for r in d2["ranks"]) == d2["sequences"]
    # the same rows per step split over two ranks, gradients averaged over all tokens: the same model, up to rounding
    a, b = d2_weights(runs.single), d2_weights(runs.home)
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    assert "held-out loss" in runs.cli.output  # the CLI evaluated after the ranks committed


@pytest.mark.slow
def test_ranks_hold_identical_weights_and_bandit_state_within_the_budget(runs):
    r = runs.result
    assert r.world_size == 2 and [x["rank"] for x in r.ranks] == [0, 1]
    line = Line(runs.home, "main")
    assert line.trained == ["d1-code", "d2-licenses", "d3-docs"]
    committed = weights_digest(load_model(line.model_dir))
    assert {x["weights_sha256"] for x in r.ranks} == {committed}
    assert {x["bandit_sha256"] for x in r.ranks} == {bandit_digest(line.state.sampler)}
    assert line.state.sampler["step"] == r.steps == 6 and any(q != 0 for q in line.state.sampler["q"])
    # the budget counts every rank: T x B sequences in all, as one process would train
    assert r.sequences == 6 * 8 == sum(x["new_sequences"] + x["replay_sequences"] for x in r.ranks)
    assert r.replay_sequences == 6 * 2 == sum(x["replay_sequences"] for x in r.ranks) == sum(r.replay_by_drop.values())
    assert [x["replay_sequences"] for x in r.ranks] == [6, 6]
    # rank 0 alone logged: one train/loss point per step, not one per rank
    assert [m.step for m in runs.losses] == [1, 2, 3, 4, 5, 6]
    assert not line.checkpoints("d3-docs").exists()  # rank 0 removed its checkpoints once committed


def test_local_slots_split_every_batch_evenly():
    for n_new, n_replay, batch, world in ((6, 2, 8, 2), (5, 3, 8, 2), (8, 0, 8, 4), (9, 3, 12, 4), (7, 1, 8, 1)):
        slots = [local_slots(n_new, n_replay, batch, r, world) for r in range(world)]
        assert sum(s.n_new for s in slots) == n_new and sum(s.n_replay for s in slots) == n_replay
        assert {s.n_new + s.n_replay for s in slots} == {batch // world}
        starts = [s.new_start for s in slots]
        assert starts == list(np.cumsum([0] + [s.n_new for s in slots[:-1]]))
    with pytest.raises(ValueError, match="multiple of train.nproc"):
        local_slots(6, 2, 8, 0, 3)


def test_each_rank_gets_its_own_reproducible_replay_stream(tmp_path):
    rng = np.random.Generator(np.random.PCG64(7))
    assert rank_rng(rng, 0) is rng
    draws = [rank_rng(np.random.Generator(np.random.PCG64(7)), r).integers(0, 10**9, 8) for r in (1, 1, 2)]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert not np.array_equal(draws[0], np.random.Generator(np.random.PCG64(7)).integers(0, 10**9, 8))


def test_digests_see_weights_and_bandit_but_not_the_rng(tmp_path):
    import pyarrow as pa

    index = pa.table({"_rowid": pa.array([0, 1, 2, 3], pa.uint64()), "drop_id": ["a"] * 4, "split": ["train"] * 4})
    index = index.append_column("cluster", pa.array([0, 0, 1, 1]))
    cfg = settings_for(tmp_path).replay
    a, b = (build_sampler(cfg, build_arms(index, ["a"], "cluster"), seed=s) for s in (0, 1))
    assert bandit_digest(a.state_dict()) == bandit_digest(b.state_dict())  # RNGs differ, bandit state does not
    b.update(np.array([0]), np.array([1.5]))
    assert bandit_digest(a.state_dict()) != bandit_digest(b.state_dict())
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=8, vocab_size=16, bos_token_id=1, eos_token_id=1)
    )
    before = weights_digest(model)
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = torch.nextafter(model.transformer.wte.weight[0, 0], torch.tensor(1.0))
    assert weights_digest(model) != before


def test_launch_refuses_before_starting_any_process(tmp_path):
    cfg = settings_for(tmp_path, **{"train.nproc": 3, "train.batch_size": 8})
    with pytest.raises(ValueError, match="multiple of train.nproc"):
        launch(cfg, Line(tmp_path, "main"), "d1")
    line = Line(tmp_path, "main")
    line.state = LineState(trained=["d1"], versions={"d1": 2})
    with pytest.raises(ValueError, match="already trained"):
        launch(cfg, line, "d1")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two CUDA devices")
def test_two_ranks_on_gpus_with_nccl(runs, tmp_path):
    gpu = settings_for(tmp_path / "h", **TINY | {"train.nproc": 2, "train.device": "cuda"})
    shutil.copytree(runs.home, gpu.home)
    line = Line(gpu.home, "main")
    line.rewind()
    result = launch(gpu, line, "d3-docs")
    assert result.world_size == 2 and len({x["weights_sha256"] for x in result.ranks}) == 1


def test_a_rank_exits_when_its_launcher_is_killed():
    """torchrun puts ranks in sessions of their own: without `die_with` a SIGKILLed launcher leaves them training."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    code = "import sys, time; from components.training.launcher import die_with; die_with(int(sys.argv[1]));"
    code += " print('ready', flush=True); time.sleep(120)"
    rank = subprocess.Popen(
        [sys.executable, "-c", code, str(launcher.pid)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert rank.stdout.readline().strip() == "ready"
        launcher.send_signal(signal.SIGKILL)
        assert rank.wait(timeout=15) == 1
    finally:
        for proc in (launcher, rank):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs CUDA")
def test_gpu_path_trains_from_pinned_prefetched_batches(tmp_path):
    three_drops(tmp_path / "drops")
    cfg = settings_for(tmp_path / "h", **TINY | {"train.device": "cuda", "train.n_layer": 1, "train.n_embd": 32})
    ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    memory, line = Memory.open(cfg), Line(cfg.home, "main")
    stats: list[dict] = []
    train_drop(cfg, memory, line, "d1-code", "none")
    result = train_drop(cfg, memory, line, "d2-licenses", "amr", on_step=lambda _, s: stats.append(s))
    assert np.isfinite(result.final_loss) and len(stats) == result.steps
    assert all(s["data_wait_s"] >= 0 and s["tokens_per_s"] > 0 for s in stats)
