"""Continuing a pretrained model: a tiny `LlamaForCausalLM` with the vocabulary of the real SmolLM2 tokenizer
(49,152), briefly pre-trained so it knows something, saved with `save_pretrained` (safetensors) next to the
tokenizer, is `train.model`. Its weights load exactly as saved, every refresh re-warms to `train.pretrained_lr`,
micro-batches give the whole batch's gradient, checkpointing recomputes with the same gradient, and the whole
refresh under Prefect's harness has a base row, judges the first promotion against the base and logs `vs_base`."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from components.core.config import TrainConfig
from components.core.metrics import BASE_ROW
from components.core.text import load_tokenizer
from components.training.model import build_model, load_model
from components.training.trainer import Trainer
from tests.helpers import jsonl, license_docs, make_drop, python_docs

CONTEXT = 64
VOCAB = 49_152


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
    )


def encode(tokenizer_dir: Path, texts: list[str], rows: int) -> torch.Tensor:
    """`rows` sequences of CONTEXT tokens of `texts`, with the real tokenizer."""
    ids = np.concatenate(load_tokenizer(str(tokenizer_dir)).encode_batch(texts))
    return torch.as_tensor(ids[: rows * CONTEXT].astype(np.int64)).view(rows, CONTEXT)


@pytest.fixture(scope="module")
def pretrained(smollm2_tokenizer, tmp_path_factory) -> Path:
    """A HF model directory (config.json, model.safetensors, tokenizer files): random init, then 40 AdamW steps on
    real text (Python's sources and licences), so its loss is far below the ln(49152) = 10.8 of a fresh model."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config())
    code = encode(smollm2_tokenizer, python_docs(12, offset=80), 128)  # other Python files than the drops'
    tokens = torch.cat([code, encode(smollm2_tokenizer, license_docs(6), 128)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        batch = tokens[torch.randint(0, len(tokens), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 8.0, loss.item()
    out = tmp_path_factory.mktemp("smol-tiny")
    model.save_pretrained(out)
    for f in smollm2_tokenizer.iterdir():
        shutil.copy(f, out / f.name)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    return out


def cfg_for(model: str, **kw) -> TrainConfig:
    return TrainConfig(model=model, batch_size=8, warmup_steps=2, grad_clip=1e9, seed=0, device="cpu", **kw)


def test_the_pretrained_weights_load_exactly_as_saved(pretrained):
    model = build_model(cfg_for(str(pretrained)), VOCAB, CONTEXT, 0, 0)
    saved = load_file(pretrained / "model.safetensors")
    state = model.state_dict()
    assert set(saved) == set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), f"{name} was re-initialised"
    assert cfg_for(str(pretrained)).pretrained and not cfg_for("llama-tiny").pretrained


def test_every_refresh_of_a_pretrained_line_re_warms_to_pretrained_lr(pretrained):
    cfg = cfg_for(str(pretrained), lr=1e-3, pretrained_lr=3e-4, min_lr_ratio=0.1)
    trainer = Trainer(load_model(pretrained), cfg, total_steps=10)
    lrs = [trainer.lr_at(s) for s in range(10)]
    assert max(lrs) == pytest.approx(3e-4) and lrs[2] == pytest.approx(3e-4)  # peak right after the warm-up
    assert lrs[0] < lrs[1] < lrs[2] and lrs[-1] == pytest.approx(3e-5)
    tiny = cfg_for("llama-tiny", n_embd=16, n_head=2, lr=1e-3, pretrained_lr=3e-4)
    scratch = Trainer(build_model(tiny, 300, CONTEXT, 0, 0), tiny, 10)
    assert max(scratch.lr_at(s) for s in range(10)) == pytest.approx(1e-3)  # from scratch: train.lr


def step_gradients(pretrained: Path, tokens: torch.Tensor, lengths: torch.Tensor, **kw):
    """Gradients the optimizer sees (after clipping) and the weights after one step of a fresh trainer."""
    trainer = Trainer(load_model(pretrained), cfg_for(str(pretrained), pretrained_lr=1e-3, **kw), total_steps=4)
    grads: list[torch.Tensor] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.extend(p.grad.detach().clone() for p in trainer.model.parameters())
    )
    losses = trainer.step(tokens, lengths)
    return grads, [p.detach().clone() for p in trainer.model.parameters()], losses, trainer


def assert_same_gradient(g: torch.Tensor, f: torch.Tensor) -> None:
    """Equal up to float32 summation order: 1e-5 of the tensor's largest entry (a summed order changes ~1e-7)."""
    torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-5 * float(f.abs().max()))


@pytest.fixture(scope="module")
def batch(smollm2_tokenizer):
    tokens = encode(smollm2_tokenizer, python_docs(3), 16)
    lengths = torch.full((16,), CONTEXT)
    lengths[::3] = torch.tensor([40, 7, 64, 2, 33, 64])  # padded rows: micro-batches hold unequal token counts
    return tokens, lengths


@pytest.mark.parametrize("accum", [4, 3])
def test_micro_batches_give_the_whole_batchs_gradient(pretrained, batch, accum):
    full_grads, full_weights, full_losses, _ = step_gradients(pretrained, *batch, grad_accum=1)
    grads, weights, losses, _ = step_gradients(pretrained, *batch, grad_accum=accum)
    assert len(grads) == len(full_grads) and any(g.abs().sum() > 0 for g in grads)
    for g, f in zip(grads, full_grads, strict=True):
        assert_same_gradient(g, f)
    # AdamW's first step is about lr * sign(gradient), so weights are compared where the gradient is not ~0
    for w, f, g in zip(weights, full_weights, full_grads, strict=True):
        clear = g.abs() > 1e-3 * g.abs().max()
        torch.testing.assert_close(w[clear], f[clear], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, full_losses, rtol=1e-6)


def test_gradient_checkpointing_recomputes_with_equal_gradients(pretrained, batch):
    plain_grads, _, _, _ = step_gradients(pretrained, *batch)
    calls: list[int] = []
    trainer = Trainer(load_model(pretrained), cfg_for(str(pretrained), gradient_checkpointing=True), total_steps=4)
    # a pre-hook inside the checkpointed forward (the layer's own hooks stay out; the recompute stops early)
    layer = trainer.model.model.layers[0].self_attn
    layer.register_forward_pre_hook(lambda *a: calls.append(1))
    grads: list[torch.Tensor] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.extend(p.grad.detach().clone() for p in trainer.model.parameters())
    )
    trainer.step(*batch)
    assert trainer.model.is_activation_checkpointing
    assert len(calls) == 2  # the forward, then its recomputation in the backward
    for g, f in zip(grads, plain_grads, strict=True):
        assert_same_gradient(g, f)
    calls.clear()
    _, _, _, plain = step_gradients(pretrained, *batch)  # off by default: no recomputation
    plain.model.model.layers[0].self_attn.register_forward_pre_hook(lambda *a: calls.append(1))
    plain.step(*batch)
    assert len(calls) == 1 and not plain.model.is_activation_checkpointing


# ---- the whole refresh, under Prefect's test harness ---------------------------------------------------------


@pytest.fixture
def refresh_env(tmp_path, monkeypatch, pretrained):
    env = {
        "AMR_HOME": str(tmp_path / "home"),
        "AMR_TRAIN__MODEL": str(pretrained),
        "AMR_INGEST__TOKENIZER": str(pretrained),
        "AMR_INGEST__CONTEXT_LENGTH": str(CONTEXT),
        "AMR_INGEST__CLUSTERS_PER_DROP": "2",
        "AMR_TRAIN__BATCH_SIZE": "8",
        "AMR_TRAIN__MAX_STEPS": "6",
        "AMR_TRAIN__WARMUP_STEPS": "2",
        "AMR_TRAIN__PRETRAINED_LR": "0.004",
        "AMR_TRAIN__GRAD_ACCUM": "2",
        "AMR_TRAIN__GRADIENT_CHECKPOINTING": "true",
        "AMR_EVALUATE__BATCH_SIZE": "8",
        "AMR_EVALUATE__MAX_SEQUENCES_PER_DROP": "16",
        "AMR_EVALUATE__REFERENCE_SEQUENCES_PER_ARM": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_drop(tmp_path / "drops", "d1-licenses", {"l.jsonl": jsonl(license_docs(3))})
    make_drop(tmp_path / "drops", "d2-code", {"code.jsonl": jsonl(python_docs(3, offset=40))})
    return tmp_path


@pytest.mark.slow
def test_a_refresh_continues_the_pretrained_model(refresh_env, pretrained):
    from components.adapters.lines import Line
    from components.cli import app
    from components.core.config import load_settings
    from components.refresh.report import write_stage_outputs
    from flows.refresh import refresh

    with prefect_test_harness(server_startup_timeout=120):
        reports = refresh(str(refresh_env / "drops"))
    assert [r.drop_id for r in reports] == ["d1-licenses", "d2-code"]
    line = Line(refresh_env / "home", "main")
    m = line.matrix
    assert m.rows == [BASE_ROW, "d1-licenses", "d2-code"] and line.state.origin == str(pretrained)
    base = m.base
    assert set(base) == {"d1-licenses", "d2-code"} and all(b < math.log(VOCAB) - 1 for b in base.values()), base
    # the first promotion was judged against the base model: the candidate had to gain on d1 over it
    first = reports[0]
    assert "vs base model" in first.reasons[0], first.reasons
    assert first.promote == (m.loss("d1-licenses", "d1-licenses") <= base["d1-licenses"])
    if not first.promote:  # (as measured here: 7.54 vs the base's 7.50; "every loss finite" would have promoted it)
        assert "below the minimum gain" in "\n".join(first.reasons)
        assert "vs base model" in reports[1].reasons[0]  # still no champion: the base again, d1 included
        assert any(r.startswith(("pass: drop d1", "fail: drop d1")) and "vs base" in r for r in reports[1].reasons)
    assert first.vs_base == {
        "d1-licenses": pytest.approx(m.loss("d1-licenses", "d1-licenses") / base["d1-licenses"] - 1)
    }
    assert set(reports[1].vs_base) == {"d1-licenses", "d2-code"}
    client = MlflowClient()
    exp = client.get_experiment_by_name("amr")
    runs = {r.data.tags["amr.drop"]: r for r in client.search_runs([exp.experiment_id])}
    d1 = runs["d1-licenses"]
    assert d1.data.metrics["eval/vs_base/d1-licenses"] == pytest.approx(first.vs_base["d1-licenses"])
    assert d1.data.metrics["eval/base_loss/d1-licenses"] == pytest.approx(base["d1-licenses"])
    assert d1.data.params["train.grad_accum"] == "2" and d1.data.params["train.gradient_checkpointing"] == "true"
    lrs = [m.value for m in client.get_metric_history(d1.info.run_id, "train/lr")]
    assert len(lrs) == 6 and max(lrs) == pytest.approx(0.004)  # pretrained_lr, not train.lr (1e-3)
    # not re-initialised: the very first step's loss is the base model's, far below a fresh model's ln(V)
    first_loss = client.get_metric_history(d1.info.run_id, "train/loss")[0].value
    assert first_loss < base["d1-licenses"] + 0.5 and first_loss < math.log(VOCAB) - 2, (first_loss, base)
    res = CliRunner().invoke(app, ["evaluate"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "(base)" in res.output and "vs base  d1-licenses" in res.output, res.output
    metrics = write_stage_outputs(load_settings(), "main", refresh_env / "metrics")
    assert set(metrics["vs_base"]) == {"d1-licenses", "d2-code"} and metrics["base_loss"] == pytest.approx(base)
