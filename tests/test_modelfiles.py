"""`amr model import`: a GGUF written by the `gguf` package and a HF directory, imported and checked for real."""

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
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from components.adapters.modelfiles import ModelFilesError, import_model, load_causal_lm
from components.core.config import ConfigError, load_settings
from components.core.files import atomic_dir
from components.training.model import load_model

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 16, 2, 4, 2, 32


def write_tiny_gguf(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A tiny llama (random float32 weights) with the real SmolLM2 tokenizer, written with `gguf.GGUFWriter`."""
    import gguf

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    rng = np.random.default_rng(seed)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials["<|im_start|>"])
    writer.add_eos_token_id(specials["<|im_end|>"])
    writer.add_tensor("token_embd.weight", weight(len(tokens), HIDDEN))
    for i in range(LAYERS):
        kv = HIDDEN // HEADS * KV_HEADS
        shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN)}
        shapes |= {"attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN)}
        shapes |= {"ffn_down": (HIDDEN, FFN)}
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(HIDDEN))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(HIDDEN))
    writer.add_tensor("output_norm.weight", 1 + weight(HIDDEN))
    writer.add_tensor("output.weight", weight(len(tokens), HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, smollm2_tokenizer) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", smollm2_tokenizer)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_gguf_import_gives_the_logits_of_transformers_direct_load(tmp_path, tiny_gguf, smollm2_tokenizer):
    result = import_model(tiny_gguf, tmp_path / "home", "tiny")
    assert result.path == tmp_path / "home" / "models" / "tiny" and result.kind == "gguf"
    files = {p.name for p in result.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "amr-import.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".gguf"))]
    config = json.loads((result.path / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    imported = load_model(result.path)  # the training path: safetensors, every tensor present
    text = "def main():\n    return 'Paris' <|im_end|> ok"
    ids = AutoTokenizer.from_pretrained(result.path)(text, add_special_tokens=False)["input_ids"]
    assert torch.equal(logits(direct.eval(), ids), logits(imported.eval(), ids))
    real = AutoTokenizer.from_pretrained(smollm2_tokenizer)(text, add_special_tokens=False)["input_ids"]
    assert ids == real  # the GGUF's tokenizer, re-saved, gives the real SmolLM2 ids


def save_tiny_llama(path: Path, tokenizer_dir: Path, vocab: int = 49152) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=1, num_attention_heads=HEADS, vocab_size=vocab
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return model


def test_hf_directory_import_keeps_weights_and_tokenizer(tmp_path, smollm2_tokenizer):
    model = save_tiny_llama(tmp_path / "src", smollm2_tokenizer)
    result = import_model(tmp_path / "src", tmp_path / "home", "llama-small")
    assert result.kind == "hf" and result.vocab_size == 49152
    ids = list(range(0, 49152, 4099))
    assert torch.equal(logits(model.eval(), ids), logits(load_model(result.path).eval(), ids))
    with pytest.raises(ModelFilesError, match="already exists.*--replace"):
        import_model(tmp_path / "src", tmp_path / "home", "llama-small")
    import_model(tmp_path / "src", tmp_path / "home", "llama-small", replace=True)


def test_pickle_only_directory_is_refused_naming_the_file(tmp_path, smollm2_tokenizer):
    save_tiny_llama(tmp_path / "src", smollm2_tokenizer)
    (tmp_path / "src" / "model.safetensors").unlink()
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ModelFilesError) as err:
        import_model(tmp_path / "src", tmp_path / "home", "pickled")
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "never loaded" in msg and "save_pretrained" in msg
    assert not (tmp_path / "home" / "models" / "pickled").exists()


def test_weights_missing_a_tensor_are_refused_at_import_and_at_training(tmp_path, smollm2_tokenizer):
    from safetensors.torch import load_file, save_file

    save_tiny_llama(tmp_path / "src", smollm2_tokenizer)
    weights = load_file(tmp_path / "src" / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFilesError, match=r"lack 1 tensor.*model\.layers\.0\.mlp\.up_proj\.weight.*at random"):
        import_model(tmp_path / "src", tmp_path / "home", "broken")
    with pytest.raises(ModelFilesError, match="up_proj"):
        load_causal_lm(tmp_path / "src")
    with pytest.raises(ModelFilesError, match="up_proj"):
        load_model(tmp_path / "src")  # what training calls for train.model and for a line's weights


@pytest.mark.parametrize("name", ["Upper", "../escape", "a/b", "-dash", ""])
def test_bad_names_are_refused(tmp_path, tiny_gguf, name):
    with pytest.raises(ModelFilesError, match="not allowed.*--name"):
        import_model(tiny_gguf, tmp_path / "home", name or " ")


def test_train_model_and_tokenizer_accept_an_imported_name(tmp_path, monkeypatch, smollm2_tokenizer):
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AMR_TRAIN__MODEL", "llama-small")
    monkeypatch.setenv("AMR_INGEST__TOKENIZER", "llama-small")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert "ingest.tokenizer = 'llama-small'" in str(err.value) and "amr model import" in str(err.value)
    monkeypatch.setenv("AMR_INGEST__TOKENIZER", "byte")
    with pytest.raises(ConfigError, match=r"train\.model = 'llama-small': no model named .*--name llama-small"):
        load_settings(None)
    monkeypatch.setenv("AMR_INGEST__TOKENIZER", "llama-small")
    save_tiny_llama(tmp_path / "src", smollm2_tokenizer)
    import_model(tmp_path / "src", tmp_path / "home", "llama-small")
    cfg = load_settings(None)
    assert cfg.train.model == cfg.ingest.tokenizer == str(tmp_path / "home" / "models" / "llama-small")


def test_cli_import_then_bad_source_exits_1_in_one_line(tmp_path, tiny_gguf):
    env = dict(os.environ, AMR_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), COLUMNS="400")
    cmd = [sys.executable, "-m", "components.cli", "model", "import"]
    ok = subprocess.run([*cmd, str(tiny_gguf), "--name", "tiny"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "imported tiny (gguf" in ok.stdout and (tmp_path / "home" / "models" / "tiny" / "config.json").is_file()
    bad = subprocess.run([*cmd, str(tmp_path / "nothing.gguf")], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no such file" in bad.stderr


KILL_WRITER = """
import sys, time
from pathlib import Path
from components.core.files import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
    (tmp / "config.json").write_text("{}")
"""


def test_sigkill_mid_write_leaves_no_half_directory(tmp_path):
    target = tmp_path / "models" / "m"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    leftovers = [p.name for p in target.parent.iterdir()]
    assert not target.exists() and leftovers == [f".m.tmp-{proc.pid}"]  # half a model, never under its name
    time.sleep(0.05)
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # the next write cleaned the leftover
    assert [p.name for p in target.iterdir()] == ["config.json"]


def test_gguf_without_the_extra_names_the_install(tmp_path, tiny_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # what an environment without the package gives on import
    with pytest.raises(ModelFilesError, match=r"needs the gguf package\. Fix: `pip install -e \.\[gguf\]`"):
        import_model(tiny_gguf, tmp_path / "home", "tiny")
    assert not (tmp_path / "home" / "models" / "tiny").exists()
