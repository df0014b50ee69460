"""The real SmolLM2 tokenizer through ingest and training: ids, speed path, identity, and refusals of a mismatch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import ConfigError
from components.core.text import TokenizerMismatch, load_tokenizer
from components.ingest import ingest_source
from components.refresh.steps import drops_to_train
from components.training.compat import check_model
from tests.helpers import jsonl, license_docs, make_drop, python_docs, settings_for
from tests.test_text import save_bpe

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = "a literal <|im_end|> and <|endoftext|> and <|im_start|>user inside the data\n"


def texts() -> list[str]:
    return python_docs(8) + license_docs(2) + [SPECIALS, "héllo wörld ✓ 日本語 😀"]


def test_fast_path_gives_the_ids_of_transformers(smollm2_tokenizer):
    tok = load_tokenizer(str(smollm2_tokenizer))
    assert tok._rust is not None  # the Rust batch path is the one under test
    hf = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    ours = tok.encode_batch(texts())
    theirs = hf(texts(), add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    assert [a.tolist() for a in ours] == theirs
    specials = set(hf.all_special_ids)
    assert not specials & set(np.concatenate(ours).tolist())  # special spellings in the data stay plain text
    assert (tok.vocab_size, tok.eos_id, tok.identity["eos"]) == (49152, 2, "<|im_end|>")


def test_identity_survives_resave_and_move_and_tells_tokenizers_apart(tmp_path, smollm2_tokenizer):
    original = load_tokenizer(str(smollm2_tokenizer)).identity
    AutoTokenizer.from_pretrained(smollm2_tokenizer).save_pretrained(tmp_path / "resaved")
    moved = shutil.move(str(tmp_path / "resaved"), str(tmp_path / "elsewhere"))
    assert load_tokenizer(moved).identity == original
    save_bpe(tmp_path / "bpe")
    other = load_tokenizer(str(tmp_path / "bpe")).identity
    assert other["sha256"] != original["sha256"] and other["vocab_size"] == 400
    assert load_tokenizer("byte").identity["sha256"] not in (original["sha256"], other["sha256"])


def test_token_counts_of_the_real_tokenizer_against_bytes(tmp_path, smollm2_tokenizer):
    docs = python_docs(12)
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(docs)})
    real = settings_for(tmp_path / "real", **{"ingest.tokenizer": str(smollm2_tokenizer)})
    byte = settings_for(tmp_path / "byte")
    (r,) = ingest_source(real, str(tmp_path / "drops"), show_progress=False)
    (b,) = ingest_source(byte, str(tmp_path / "drops"), show_progress=False)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert b.record.tokens == n_bytes + len(docs)  # one token a byte, one eos a document
    hf = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    expected = sum(len(ids) for ids in hf(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    assert r.record.tokens == expected + len(docs)
    assert 2.5 < n_bytes / r.record.tokens < 6.0, n_bytes / r.record.tokens  # BPE on Python source: ~3-4 bytes
    meta, identity = Memory.open(real).meta(), Memory.open(real).tokenizer_identity()
    assert meta["vocab_size"] == 49152 and identity == load_tokenizer(str(smollm2_tokenizer)).identity


def test_a_4096_token_context_ingests_and_4097_is_refused(tmp_path, smollm2_tokenizer):
    cfg = settings_for(tmp_path / "home", **{"ingest.tokenizer": str(smollm2_tokenizer), "ingest.context_length": 4096})
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(40))})
    (result,) = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert result.status == "ingested", result.message
    table = Memory.open(cfg).table()
    assert table.schema.field("tokens").type.list_size == 4096 and table.count_rows() >= 4
    with pytest.raises(ConfigError, match="ingest.context_length = 4097.*less than or equal to 4096"):
        settings_for(tmp_path / "home", **{"ingest.context_length": 4097})


@pytest.fixture
def real_memory(tmp_path, smollm2_tokenizer):
    cfg = settings_for(tmp_path / "home", **{"ingest.tokenizer": str(smollm2_tokenizer)})
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(6))})
    assert ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)[0].status == "ingested"
    make_drop(tmp_path / "drops", "d2", {"a.jsonl": jsonl(python_docs(6, offset=10))})
    return cfg


def test_a_moved_copy_of_the_same_tokenizer_ingests(tmp_path, real_memory, smollm2_tokenizer):
    moved = shutil.copytree(smollm2_tokenizer, tmp_path / "moved-tokenizer")
    cfg = settings_for(real_memory.home, **{"ingest.tokenizer": str(moved)})
    assert [r.status for r in ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)] == [
        "present",
        "ingested",
    ]


def test_another_tokenizer_is_refused_with_both_identities_api_and_cli(tmp_path, real_memory):
    save_bpe(tmp_path / "bpe")
    other = settings_for(real_memory.home, **{"ingest.tokenizer": str(tmp_path / "bpe")})
    mine = Memory.open(real_memory).tokenizer_identity()
    theirs = load_tokenizer(str(tmp_path / "bpe")).identity
    with pytest.raises(TokenizerMismatch) as err:
        ingest_source(other, str(tmp_path / "drops"), show_progress=False)
    msg = str(err.value)
    assert mine["sha256"][:12] in msg and theirs["sha256"][:12] in msg and "memory.uri" in msg
    assert Memory.open(real_memory).ingested() == ["d1"]  # nothing read, nothing written
    env = dict(os.environ, AMR_HOME=str(real_memory.home), PYTHONPATH=str(ROOT), COLUMNS="1000")
    env |= {"AMR_INGEST__TOKENIZER": str(tmp_path / "bpe"), "AMR_INGEST__CONTEXT_LENGTH": "64"}
    cli = [sys.executable, "-m", "components.cli", "ingest", str(tmp_path / "drops")]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert mine["sha256"][:12] in proc.stderr and theirs["sha256"][:12] in proc.stderr


def tiny_llama(path: Path, vocab: int, tokenizer_dir: Path | None) -> Path:
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=vocab
    )
    LlamaForCausalLM(config).save_pretrained(path)
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def test_training_a_model_that_does_not_fit_the_memory_is_refused(tmp_path, real_memory, smollm2_tokenizer):
    memory = Memory.open(real_memory)
    meta, mine = memory.meta(), memory.tokenizer_identity()
    save_bpe(tmp_path / "bpe")
    small = tiny_llama(tmp_path / "small", 400, tmp_path / "bpe")
    other_tok = tiny_llama(tmp_path / "other", 49152, tmp_path / "bpe")
    good = tiny_llama(tmp_path / "good", 49152, smollm2_tokenizer)
    bare = tiny_llama(tmp_path / "bare", 49152, None)  # no tokenizer of its own: the vocabulary must cover

    def check(model: Path):
        check_model(settings_for(real_memory.home, **{"train.model": str(model)}), meta, mine)

    with pytest.raises(TokenizerMismatch, match=rf"embeds 400 token ids .*{mine['sha256'][:12]}.* has 49152"):
        check(small)
    with pytest.raises(TokenizerMismatch) as err:
        check(other_tok)
    theirs = load_tokenizer(str(tmp_path / "bpe")).identity["sha256"][:12]
    assert theirs in str(err.value) and mine["sha256"][:12] in str(err.value) and "memory.uri" in str(err.value)
    check(good)
    check(bare)
    # The refresh plan refuses before it opens an MLflow run: nothing is tracked.
    refresh_cfg = settings_for(real_memory.home, **{"train.model": str(other_tok)})
    with pytest.raises(TokenizerMismatch):
        drops_to_train(refresh_cfg, Line(refresh_cfg.home, "main"))
    assert not (real_memory.home / "mlflow.db").exists() and not (real_memory.home / "mlruns").exists()
    env = dict(os.environ, AMR_HOME=str(real_memory.home), PYTHONPATH=str(ROOT), COLUMNS="1000")
    env |= {"AMR_TRAIN__MODEL": str(small), "AMR_INGEST__CONTEXT_LENGTH": "64"}
    env |= {"AMR_INGEST__TOKENIZER": real_memory.ingest.tokenizer}
    proc = subprocess.run(
        [sys.executable, "-m", "components.cli", "train"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "embeds 400 token ids" in proc.stderr and mine["sha256"][:12] in proc.stderr


def test_evaluation_bounds_the_logits_of_one_forward(monkeypatch):
    """32 rows of 4096 tokens with a 49k vocabulary would hold 26 GB of logits: rows go fewer per forward instead."""
    import torch

    from components.training import trainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=300)
    )
    tokens = torch.randint(0, 300, (8, 40))
    lengths = torch.tensor([40, 30, 40, 12, 40, 40, 5, 40])
    rows_seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    whole = trainer.per_sample_loss(model, tokens, lengths, "cpu", batch_size=8)
    assert rows_seen == [8]
    monkeypatch.setattr(trainer, "LOGITS_PER_FORWARD", 3 * 40 * 300)  # room for three rows' logits
    rows_seen.clear()
    bounded = trainer.per_sample_loss(model, tokens, lengths, "cpu", batch_size=8)
    assert np.allclose(whole, bounded, rtol=1e-5, atol=1e-6)
    assert rows_seen == [3, 3, 2]


def test_a_memory_without_a_recorded_identity_is_compared_by_spec_vocabulary_and_eos(
    tmp_path, monkeypatch, smollm2_tokenizer
):
    """Memories written before identities existed: the schema metadata then had no `amr.tokenizer_id`."""
    from components.ingest import pipeline

    new_meta = pipeline.memory_meta
    monkeypatch.setattr(
        pipeline, "memory_meta", lambda *a: {k: v for k, v in new_meta(*a).items() if k != "tokenizer_id"}
    )
    cfg = settings_for(tmp_path / "home", **{"ingest.tokenizer": str(smollm2_tokenizer)})
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(6))})
    assert ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)[0].status == "ingested"
    monkeypatch.setattr(pipeline, "memory_meta", new_meta)
    memory = Memory.open(cfg)
    assert memory.tokenizer_identity() is None and memory.meta()["tokenizer"] == str(smollm2_tokenizer)
    make_drop(tmp_path / "drops", "d2", {"a.jsonl": jsonl(python_docs(6, offset=10))})
    moved = shutil.copytree(smollm2_tokenizer, tmp_path / "moved")
    with pytest.raises(TokenizerMismatch, match=r"no identity recorded|vocabulary 49152"):
        ingest_source(settings_for(cfg.home, **{"ingest.tokenizer": str(moved)}), str(tmp_path / "drops"), False)
    assert ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)[-1].status == "ingested"
    good = tiny_llama(tmp_path / "good", 49152, moved)  # same vocabulary and eos: accepted for an old memory
    check_model(settings_for(cfg.home, **{"train.model": str(good)}), memory.meta(), None)
