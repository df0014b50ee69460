"""The served model takes text (its tokenizer travels with it), scores long rows in windows, continues text, answers
over REST from `mlflow models serve`, and leaves MLflow as a plain Hugging Face directory (`amr export`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from components.adapters import registry
from components.adapters.registry import RegistryError
from components.cli import app
from components.core.config import GateConfig
from components.core.text import ByteTokenizer, HFTokenizer
from components.evaluation.gate import Candidate, decide
from components.training.model import save_model
from components.training.trainer import per_sample_loss
from tests.conftest import MLFLOW_ENV, free_port
from tests.helpers import python_docs, settings_for

NAME = "amr-model"
POSITIONS = 32
PROMOTE = decide(Candidate("d1", {"d1": 3.0}), None, GateConfig())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store under AMR_HOME for the module, holding a tiny byte-level GPT-2 as `amr-model@champion`."""
    with pytest.MonkeyPatch.context() as mp:
        for name in MLFLOW_ENV:
            mp.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("serving") / "amr"
        mp.setenv("AMR_HOME", str(root))
        settings = settings_for(root)
        torch.manual_seed(0)
        config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=384, n_positions=POSITIONS, eos_token_id=1)
        model = GPT2LMHeadModel(config).eval()
        save_model(model, root / "weights")
        mv = log(settings, root / "weights", NAME, "byte")
        registry.set_champion(MlflowClient(), NAME, mv.version, PROMOTE)
        yield SimpleNamespace(settings=settings, root=root, model=model, served=mlflow.pyfunc.load_model(uri()))
        mlflow.set_tracking_uri(None)


def log(settings, weights: Path, name: str, tokenizer: str):
    registry.configure(settings)
    with registry.start_run(settings, run_name="refresh"):
        return registry.log_model_version(weights, {"drops": ["d1"], "tokenizer": tokenizer}, name)


def uri(name: str = NAME) -> str:
    return f"models:/{name}@champion"


def texts() -> list[str]:
    """Real text: three short rows within the 32 positions and two long ones (windows)."""
    docs = python_docs(5)
    return [docs[0][:12], docs[1][:25], docs[2][:POSITIONS], docs[3][:90], docs[4][:200]]


def windowed_loss(model, ids: list[int], width: int) -> float:
    """Reference: full-width windows every width/2 tokens, each target scored once, by the window that reaches it
    first (the documented rule), computed token by token from the in-memory model."""
    losses = []
    for t in range(1, len(ids)):  # target t, scored in the first window whose end passes it
        end = width if t < width else width + ((t - width) // (width // 2) + 1) * (width // 2)
        end = min(end, len(ids))
        start = max(end - width, 0)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[start:end]])).logits[0]
        losses.append(float(F.cross_entropy(logits[t - 1 - start][None], torch.tensor([ids[t]]))))
    return float(np.mean(losses))


# ---- scoring ----------------------------------------------------------------------------------------------


def test_text_and_input_ids_give_the_same_losses_and_long_rows_are_scored_in_windows(store):
    rows = texts()
    ids = [a.tolist() for a in ByteTokenizer().encode_batch(rows)]
    by_text = store.served.predict(pd.DataFrame({"text": rows}))
    by_ids = store.served.predict(pd.DataFrame({"input_ids": ids}))
    assert list(by_text.columns) == ["loss", "perplexity", "next_token"]
    pd.testing.assert_frame_equal(by_text, by_ids)
    np.testing.assert_allclose(by_text["perplexity"], np.exp(by_text["loss"]), rtol=1e-12)

    short = [r for r in ids if len(r) <= POSITIONS]
    lengths = np.array([len(r) for r in short])
    padded = np.array([r + [0] * (lengths.max() - len(r)) for r in short])
    want = per_sample_loss(store.model, padded, lengths, "cpu", batch_size=8)  # the trainer's own definition
    np.testing.assert_allclose(by_text["loss"].to_numpy()[: len(short)], want, rtol=1e-5)
    for i in (3, 4):  # 90 and 200 tokens through 32 positions
        assert len(ids[i]) > POSITIONS
        assert by_text["loss"].iloc[i] == pytest.approx(windowed_loss(store.model, ids[i], POSITIONS), rel=1e-5)
        with torch.no_grad():
            last = store.model(input_ids=torch.tensor([ids[i][-POSITIONS:]])).logits[0, -1].argmax()
        assert by_text["next_token"].iloc[i] == int(last)


def test_bad_rows_are_one_clear_error(store):
    with pytest.raises(Exception, match="not both"):
        store.served.predict(pd.DataFrame({"text": ["abc"], "input_ids": [[5, 6]]}))
    with pytest.raises(Exception, match="no `text` and no `input_ids`"):
        store.served.predict(pd.DataFrame({"text": [None, "abc"], "input_ids": [None, None]}))
    with pytest.raises(Exception, match="below the model's 32 positions"):
        store.served.predict(pd.DataFrame({"text": ["abc"]}), params={"max_new_tokens": POSITIONS})


def test_an_unloadable_tokenizer_is_refused_before_anything_is_logged(store, tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(RegistryError, match=f"cannot bundle the tokenizer: tokenizer '{missing}': no such directory"):
        log(store.settings, store.root / "weights", "unbundled", str(missing))
    assert MlflowClient().search_model_versions("name = 'unbundled'") == []


# ---- generation -------------------------------------------------------------------------------------------


def test_greedy_continuation_is_the_argmax_path_and_seeded_sampling_is_reproducible(store):
    rows = texts()[:3]
    greedy = store.served.predict(pd.DataFrame({"text": rows}), params={"max_new_tokens": 6})
    again = store.served.predict(pd.DataFrame({"text": rows}), params={"max_new_tokens": 6})
    pd.testing.assert_frame_equal(greedy, again)
    tokenizer = ByteTokenizer()
    for row, got, text in zip(rows, greedy["continuation_ids"], greedy["continuation"], strict=True):
        ids = tokenizer.encode_batch([row])[0].tolist()[-(POSITIONS - 6) :]  # room for the 6 new tokens
        want = []
        with torch.no_grad():
            while len(want) < 6 and (not want or want[-1] != 1):  # stops at eos (id 1)
                want.append(int(store.model(input_ids=torch.tensor([ids + want])).logits[0, -1].argmax()))
        assert list(got) == want and text == tokenizer.decode(want)

    def sample(seed):
        params = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.95, "seed": seed}
        return store.served.predict(pd.DataFrame({"text": rows}), params=params)["continuation_ids"].map(list).tolist()

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first and first != greedy["continuation_ids"].map(list).tolist()


# ---- export -----------------------------------------------------------------------------------------------


def flat(result) -> str:
    """The CLI's output without the console's line wrapping."""
    return " ".join(result.output.split())


def test_export_loads_with_plain_transformers_and_gives_identical_logits(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: AMR_HOME (the module's store) is the configuration
    res = CliRunner().invoke(app, ["export", "--alias", "champion", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True, trust_remote_code=False)
    text = texts()[1]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == ByteTokenizer().encode_batch([text])[0].tolist()
    with torch.no_grad():
        assert torch.equal(model.eval()(torch.tensor([ids])).logits, store.model(torch.tensor([ids])).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]  # the temporary directory is gone

    res = CliRunner().invoke(app, ["export", "--version", "1", str(tmp_path / "hf")])  # now non-empty
    assert res.exit_code == 1 and f"{tmp_path / 'hf'} exists and is not an empty directory" in flat(res)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "none")])
    assert res.exit_code == 1 and "exactly one of --alias A or --version N" in flat(res)
    res = CliRunner().invoke(app, ["export", "--version", "99", str(tmp_path / "none")])
    assert res.exit_code == 1 and "models:/amr-model/99" in flat(res) and not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()  # an empty directory is filled
    assert registry.export_version(store.settings, tmp_path / "empty", version=1) == tmp_path / "empty"


def test_a_tiny_llama_with_the_real_smollm2_tokenizer(store, smollm2_tokenizer, tmp_path):
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    save_model(model, tmp_path / "llama")
    mv = log(store.settings, tmp_path / "llama", "llama", str(smollm2_tokenizer))
    registry.set_champion(MlflowClient(), "llama", mv.version, PROMOTE)
    served = mlflow.pyfunc.load_model(uri("llama"))
    rows = python_docs(3)
    rows = [rows[0][:40], rows[1][:400]]  # the second is longer than 64 BPE tokens
    ids = [a.tolist() for a in HFTokenizer(str(smollm2_tokenizer)).encode_batch(rows)]
    assert len(ids[0]) < 64 < len(ids[1])
    by_text = served.predict(pd.DataFrame({"text": rows}), params={"max_new_tokens": 4})
    by_ids = served.predict(pd.DataFrame({"input_ids": ids}), params={"max_new_tokens": 4})
    pd.testing.assert_frame_equal(by_text, by_ids)
    assert by_text["loss"].iloc[1] == pytest.approx(windowed_loss(model, ids[1], 64), rel=1e-5)
    assert by_text["continuation"].iloc[0] == HFTokenizer(str(smollm2_tokenizer)).decode(by_text["continuation_ids"][0])

    out = registry.export_version(store.settings, tmp_path / "hf", alias="champion", name="llama")
    exported = AutoTokenizer.from_pretrained(out, local_files_only=True, trust_remote_code=False)
    assert exported(rows[1], add_special_tokens=False)["input_ids"] == ids[1] and len(exported) == 49152
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, trust_remote_code=False).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(torch.tensor([ids[0]])).logits, model(torch.tensor([ids[0]])).logits)


# ---- REST -------------------------------------------------------------------------------------------------


@pytest.mark.slow  # the server takes 20-40 s to start on a busy 2-core machine
def test_mlflow_models_serve_answers_text_over_rest_on_loopback(store, tmp_path):
    """`mlflow models serve` as the README says to run it: the venv's bin on PATH, the store in the environment."""
    port, bindir = free_port(), Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env |= {"PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    cmd = ["mlflow", "models", "serve", "-m", uri(), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc, log_path, timeout=180)
        rows = texts()[:2]
        body = json.dumps({"dataframe_records": [{"text": t} for t in rows], "params": {"max_new_tokens": 5}})
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            got = json.load(resp)["predictions"]
        want = store.served.predict(pd.DataFrame({"text": rows}), params={"max_new_tokens": 5})
        assert [r["loss"] for r in got] == pytest.approx(want["loss"].tolist(), rel=1e-6)
        assert [r["continuation"] for r in got] == want["continuation"].tolist()
        assert [list(r["continuation_ids"]) for r in got] == want["continuation_ids"].map(list).tolist()
        assert all(len(r["continuation_ids"]) >= 1 for r in got)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group started here
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow models serve not ready at {url} after {timeout}s:\n{log.read_text()[-3000:]}")
