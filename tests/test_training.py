"""Training core: schedule shape, learning, loss bookkeeping, model I/O. Tiny models on real text bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from components.core.config import TrainConfig
from components.training import Trainer, build_model, get_lr, load_model, per_sample_loss, save_model

TEXT = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/textwrap.py").read_bytes()
VOCAB, CTX, EOS, PAD = 384, 32, 1, 0  # byte tokenizer: ids 0-2 special, bytes shifted by 3


def text_batch(rows: int, ctx: int = CTX, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(TEXT, dtype=np.uint8).astype(np.int32) + 3
    tokens = data[offset : offset + rows * ctx].reshape(rows, ctx)
    return tokens, np.full(rows, ctx)


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(n_layer=2, n_embd=32, n_head=4, lr=1e-2, warmup_steps=5, device="cpu", seed=0)
    return TrainConfig(**{**base, **overrides})


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


# --- schedule -------------------------------------------------------------------------------------


def test_lr_warms_up_monotonically_to_the_peak_then_decays_to_the_floor() -> None:
    total, lr, warmup, floor = 100, 1e-3, 10, 1e-4
    lrs = [get_lr(s, total, lr, warmup, floor) for s in range(total)]
    assert 0 < lrs[0] < 0.2 * lr
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True))
    assert lrs[warmup] == pytest.approx(lr) and max(lrs) == pytest.approx(lr)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(floor)
    assert get_lr(total + 5, total, lr, warmup, floor) == pytest.approx(floor)
    # cosine: halfway through the decay (steps 10..100 of 101), halfway down
    assert get_lr(55, 101, lr, warmup, floor) == pytest.approx((lr + floor) / 2)
    assert get_lr(40, 101, lr, warmup, floor) == pytest.approx(floor + 0.75 * (lr - floor))  # cos(pi / 3) = 0.5


def test_lr_warmup_is_clipped_to_half_of_a_short_run() -> None:
    lrs = [get_lr(s, 6, 1.0, 100, 0.0) for s in range(6)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up clipped to 6 // 2 = 3 steps
    assert lrs[-1] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        get_lr(0, 0, 1.0, 0, 0.0)


# --- trainer --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_gpt2_learns_real_text() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg, VOCAB, CTX, EOS, PAD)
    trainer = Trainer(model, cfg, total_steps=40)
    tokens, lengths = text_batch(8)
    before = per_sample_loss(model, tokens, lengths, "cpu", batch_size=4).mean()
    for _ in range(40):
        trainer.step(tokens, lengths)
    after = per_sample_loss(model, tokens, lengths, "cpu", batch_size=4).mean()
    assert before == pytest.approx(math.log(VOCAB), rel=0.05)  # an untrained model is about uniform
    assert after < 0.7 * before
    assert trainer.step_idx == 40
    stats = trainer.last_stats
    assert stats["lr"] == pytest.approx(get_lr(39, 40, cfg.lr, cfg.warmup_steps, cfg.lr * cfg.min_lr_ratio))
    assert stats["tokens"] == 8 * (CTX - 1) and stats["tokens_per_s"] > 0 and stats["grad_norm"] > 0


def test_step_returns_the_losses_of_its_own_forward_pass() -> None:
    cfg = tiny_cfg()
    model = without_dropout(build_model(cfg, VOCAB, CTX, EOS, PAD))
    trainer = Trainer(model, cfg, total_steps=10)
    tokens, lengths = text_batch(6, offset=500)
    lengths[2] = 20
    expected = per_sample_loss(model, tokens, lengths, "cpu", batch_size=4)
    weights_before = model.transformer.wte.weight.detach().clone()
    got = trainer.step(tokens, lengths)
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.equal(weights_before, model.transformer.wte.weight)  # the step did update
    assert trainer.last_stats["loss"] == pytest.approx(
        (expected * (lengths - 1)).sum() / (lengths - 1).sum(), abs=1e-5
    )  # batch loss = mean over real tokens, not over rows


def test_padding_is_ignored() -> None:
    model = without_dropout(build_model(tiny_cfg(), VOCAB, CTX, EOS, PAD))
    tokens, lengths = text_batch(3, offset=2000)
    padded = tokens.copy()
    padded[1, 12:] = PAD
    padded[2] = np.concatenate([tokens[1, :12], tokens[0, 12:]])  # garbage after the end must not matter either
    lengths = np.array([CTX, 12, 12])
    losses = per_sample_loss(model, padded, lengths, "cpu", batch_size=3)
    alone = per_sample_loss(model, tokens[1:2, :12], np.array([12]), "cpu", batch_size=1)
    assert losses[1] == pytest.approx(alone[0], abs=1e-5)
    assert losses[2] == pytest.approx(alone[0], abs=1e-5)
    short = per_sample_loss(model, tokens[:1], np.array([1]), "cpu", batch_size=1)
    assert np.isnan(short[0])  # one token predicts nothing


def test_grad_accumulation_matches_one_big_batch() -> None:
    tokens, lengths = text_batch(5, offset=4000)
    lengths[3] = 9  # uneven micro-batches and uneven token counts
    results = []
    for accum in (1, 2):
        cfg = tiny_cfg(grad_accum=accum)
        model = without_dropout(build_model(cfg, VOCAB, CTX, EOS, PAD))
        trainer = Trainer(model, cfg, total_steps=10)
        losses = [trainer.step(tokens, lengths) for _ in range(3)]
        results.append((losses, model.state_dict()))
    (loss1, sd1), (loss2, sd2) = results
    np.testing.assert_allclose(np.stack(loss1), np.stack(loss2), atol=1e-5)
    for key in sd1:
        torch.testing.assert_close(sd1[key], sd2[key], atol=1e-5, rtol=1e-4)


def test_weight_decay_only_on_matrices() -> None:
    trainer = Trainer(build_model(tiny_cfg(), VOCAB, CTX, EOS, PAD), tiny_cfg(weight_decay=0.1), total_steps=5)
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])
    assert len(plain["params"]) > 0


def test_rejects_malformed_batches() -> None:
    trainer = Trainer(build_model(tiny_cfg(), VOCAB, CTX, EOS, PAD), tiny_cfg(), total_steps=5)
    tokens, lengths = text_batch(2)
    with pytest.raises(ValueError):
        trainer.step(tokens, lengths[:1])
    with pytest.raises(ValueError):
        trainer.step(tokens, np.array([CTX + 1, 3]))
    with pytest.raises(ValueError):
        trainer.step(tokens, np.array([1, 0]))
    assert trainer.step_idx == 0


# --- models ---------------------------------------------------------------------------------------


def test_builds_are_seeded() -> None:
    a = build_model(tiny_cfg(seed=3), VOCAB, CTX, EOS, PAD)
    b = build_model(tiny_cfg(seed=3), VOCAB, CTX, EOS, PAD)
    c = build_model(tiny_cfg(seed=4), VOCAB, CTX, EOS, PAD)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)


def test_save_model_writes_only_safetensors_and_json(tmp_path: Path) -> None:
    model = build_model(tiny_cfg(), VOCAB, CTX, EOS, PAD)
    save_model(model, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    loaded = load_model(tmp_path / "m")
    assert all(
        torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    tokens, lengths = text_batch(2)
    np.testing.assert_array_equal(
        per_sample_loss(model, tokens, lengths, "cpu", 2), per_sample_loss(loaded, tokens, lengths, "cpu", 2)
    )


def test_local_model_directory_is_loaded_and_checked(tmp_path: Path) -> None:
    save_model(build_model(tiny_cfg(), 300, CTX, EOS, PAD), tmp_path / "small-vocab")
    local = build_model(tiny_cfg(model=str(tmp_path / "small-vocab")), 260, CTX, EOS, PAD)
    assert local.get_input_embeddings().num_embeddings == 300
    with pytest.raises(ValueError, match="embeds 300 token ids"):
        build_model(tiny_cfg(model=str(tmp_path / "small-vocab")), VOCAB, CTX, EOS, PAD)
    with pytest.raises(ValueError, match="positions"):
        build_model(tiny_cfg(model=str(tmp_path / "small-vocab")), 260, 2 * CTX, EOS, PAD)
    with pytest.raises(ValueError, match="local model directory"):
        build_model(tiny_cfg(model="gpt2"), VOCAB, CTX, EOS, PAD)


def test_llama_tiny_builds_and_steps() -> None:
    cfg = tiny_cfg(model="llama-tiny")
    model = build_model(cfg, VOCAB, CTX, EOS, PAD)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.intermediate_size == 4 * cfg.n_embd
    before = [p.detach().clone() for p in model.parameters()]
    losses = Trainer(model, cfg, total_steps=3).step(*text_batch(2))
    assert losses.shape == (2,) and np.all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only")
def test_cuda_step_uses_bf16_autocast_and_keeps_fp32_weights() -> None:
    cfg = tiny_cfg(device="auto")
    model = build_model(cfg, VOCAB, CTX, EOS, PAD)
    trainer = Trainer(model, cfg, total_steps=20)
    assert trainer.device.type == "cuda"
    tokens, lengths = text_batch(8)
    first = trainer.step(tokens, lengths).mean()
    for _ in range(19):
        last = trainer.step(tokens, lengths).mean()
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert last < 0.8 * first
    evaluated = per_sample_loss(model, torch.as_tensor(tokens).cuda(), torch.as_tensor(lengths).cuda(), "cuda", 4)
    np.testing.assert_allclose(evaluated.mean(), last, rtol=0.2)  # bf16 vs bf16, one step and dropout apart
