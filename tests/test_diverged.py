"""A model that produces non-finite losses is measured as such (never averaged away), and a diverged model does
not become the line's next starting point."""

from __future__ import annotations

import math

import pytest
import torch

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.evaluation import evaluate_line
from components.ingest import ingest_source
from components.training.loop import train_drop
from components.training.model import load_model, save_model
from tests.helpers import settings_for, three_drops

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_two(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    cfg = settings_for(home, **{"train.max_steps": 3, "train.batch_size": 4, "train.n_layer": 1, "train.n_embd": 32})
    three_drops(home / "drops")
    ingest_source(cfg, str(home / "drops"), show_progress=False)
    memory, line = Memory.open(cfg), Line(home, "main")
    for drop in ("d1-code", "d2-licenses"):
        train_drop(cfg, memory, line, drop)
    return cfg


def test_non_finite_sequence_losses_make_the_drop_loss_non_finite(trained_two, tmp_path):
    cfg = trained_two.model_copy(update={"home": tmp_path / "home"})
    import shutil

    shutil.copytree(trained_two.home, cfg.home)
    line = Line(cfg.home, "main")
    healthy = evaluate_line(cfg, Memory.open(cfg), line)
    assert healthy.healthy and not healthy.nonfinite and all(map(math.isfinite, healthy.drop_losses.values()))
    assert healthy.uniform_loss == pytest.approx(math.log(Memory.open(cfg).meta()["vocab_size"]))

    model = load_model(line.model_dir)
    with torch.no_grad():
        model.transformer.wte.weight[ord("e") + 3] = math.nan  # byte tokens: id = byte + 3 (pad, eos, unk first)
    save_model(model, line.model_dir)
    broken = evaluate_line(cfg, Memory.open(cfg), line)
    assert not broken.healthy
    assert broken.nonfinite and all(n > 0 for n in broken.nonfinite.values())
    assert not any(math.isfinite(v) for d, v in broken.drop_losses.items() if d in broken.nonfinite)


def test_a_diverged_model_is_not_the_next_starting_point(trained_two, tmp_path):
    import shutil

    cfg = trained_two.model_copy(update={"home": tmp_path / "home"})
    shutil.copytree(trained_two.home, cfg.home)
    line = Line(cfg.home, "main")
    line.finish_gate("d1-code", "promoted", healthy=True)
    assert line.state.model == "models/d2-licenses"  # a healthy model: the line goes on from its own latest
    line.finish_gate("d2-licenses", "rejected", healthy=False)
    assert line.state.model == "models/d1-code" and line.progress("d2-licenses").phase == "gated"
    assert Line(cfg.home, "main").state.model == "models/d1-code"  # durable

    train_drop(cfg, Memory.open(cfg), line, "d3-docs")
    assert line.state.model == "models/d3-docs"
    assert (line.root / "models" / "d1-code").is_dir()  # what d3 started from is kept (d2's may be pruned)
    record = line.trained_record("d3-docs")
    assert record["drop_id"] == "d3-docs" and record["steps"] == 3
