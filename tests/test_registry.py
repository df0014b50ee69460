"""The MLflow adapter against real MLflow: a SQLite store under tmp_path, and a real `mlflow server` on loopback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import lancedb
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from transformers import GPT2Config, GPT2LMHeadModel

from components.adapters import registry
from components.adapters.registry import RegistryError
from components.core.config import GateConfig
from components.evaluation.gate import Candidate, Champion, decide, override
from components.training.model import load_model, save_model
from components.training.trainer import per_sample_loss
from tests.conftest import MLFLOW_ENV
from tests.helpers import python_docs, settings_for

NAME = "amr-model"

LOOPBACK = ("127.0.0.1", "::1", "localhost")


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer GPT-2 saved as safetensors, and the model object it came from."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=384, n_positions=32, bos_token_id=1, eos_token_id=1)
    )
    model.eval()
    out = tmp_path_factory.mktemp("weights") / "final"
    save_model(model, out)
    return SimpleNamespace(model=model, dir=out)


@pytest.fixture
def clean_mlflow(monkeypatch):
    """No MLflow location leaks in from the environment, and none leaks out to the next test."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); each test registers its own model."""
    with pytest.MonkeyPatch.context() as mp:
        for name in MLFLOW_ENV:
            mp.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("store") / "amr"
        yield settings_for(root), root
        mlflow.set_tracking_uri(None)


@pytest.fixture
def home(store, clean_mlflow, request):
    settings, root = store
    registry.configure(settings)  # again: another test may have pointed MLflow elsewhere
    name = request.node.name.removeprefix("test_")[:60]
    return SimpleNamespace(settings=settings, root=root, client=MlflowClient(), name=name)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup beyond loopback fails, as on an air-gapped host."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise OSError(f"network disabled in this test: connect to {address}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            raise socket.gaierror(f"network disabled in this test: lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(OSError, match="network disabled"):  # the guard is really in place
        socket.create_connection(("192.0.2.1", 443), timeout=1)


# ---- helpers -----------------------------------------------------------------------------------------------


def token_rows(n: int = 5) -> list[list[int]]:
    """Real text as byte-level token ids (ByT5's +3 offset), of varied lengths within the 32 positions."""
    texts = python_docs(n)
    return [[b + 3 for b in text.encode()[: 6 + 5 * i]] for i, text in enumerate(texts)]


def reference(model, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory model's per-row loss (the trainer's own definition) and greedy next token."""
    lengths = np.array([len(r) for r in rows])
    tokens = np.zeros((len(rows), lengths.max()), dtype=np.int64)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    losses = per_sample_loss(model, tokens, lengths, "cpu", batch_size=8)
    with torch.no_grad():
        nexts = [int(model(input_ids=torch.tensor([r])).logits[0, -1].argmax()) for r in rows]
    return losses, np.array(nexts)


def log_version(settings, weights: Path, name: str, meta: dict | None = None):
    with registry.start_run(settings, run_name="refresh") as run:
        mv = registry.log_model_version(weights, meta or {"drops": ["d1"], "memory_version": 2}, name)
    return run, mv


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


LIMITS = GateConfig()
PROMOTE = decide(Candidate("d1", {"d1": 3.0}), None, LIMITS)
REJECT = decide(Candidate("d2", {"d1": 9.0, "d2": 3.0}, {"d1": 2.0}), Champion("1", {"d1": 2.0, "d2": 4.0}), LIMITS)


# ---- tracking ----------------------------------------------------------------------------------------------


def test_configure_defaults_to_sqlite_under_home(home):
    uri = registry.configure(home.settings)
    assert uri == f"sqlite:///{home.root.resolve() / 'mlflow.db'}"
    assert (home.root / "mlflow.db").is_file()
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    exp = home.client.get_experiment_by_name("amr")
    assert exp.artifact_location == (home.root.resolve() / "mlartifacts").as_uri()
    assert registry.configure(home.settings) == uri  # idempotent: the experiment is reused, not re-created
    assert len([e for e in home.client.search_experiments() if e.name == "amr"]) == 1


def test_configure_precedence(tmp_path, clean_mlflow, monkeypatch):
    a, b = settings_for(tmp_path / "a"), settings_for(tmp_path / "b")
    a_uri, b_uri = (f"sqlite:///{(tmp_path / x).resolve() / 'mlflow.db'}" for x in "ab")
    assert registry.configure(a) == a_uri
    # MLflow exported a's URI to the environment; b must still get its own store, not inherit a's
    assert registry.configure(b) == b_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a_uri)  # now the user names a store
    assert registry.configure(b) == a_uri
    a.mlflow.tracking_uri = b_uri
    assert registry.configure(a) == b_uri  # the params file wins over the variable
    assert registry.configure(settings_for(tmp_path / "c")) == a_uri  # and the user's variable is still honoured
    assert not (tmp_path / "c").exists()


def test_flat_params_cover_every_field_and_redact_credentials(tmp_path):
    settings = settings_for(tmp_path)
    settings.mlflow.tracking_uri = "https://alice:s3cret@mlflow.example.org:8443/api"
    params = registry.flat_params(settings)
    assert params["ingest.context_length"] == "64" and params["train.lr"] == "0.001"
    assert params["replay.strategy"] == settings.replay.strategy and params["train.max_steps"] == "null"
    assert params["home"] == str(tmp_path)
    assert params["mlflow.tracking_uri"] == "https://alice:***@mlflow.example.org:8443/api"
    assert "s3cret" not in "".join(params.values())
    sections = settings.model_dump()
    n_fields = sum(len(v) if isinstance(v, dict) else 1 for v in sections.values())
    assert len(params) == n_fields


def test_run_records_params_memory_input_and_lineage(home, tmp_path):
    db = lancedb.connect(tmp_path / "memory")
    table = db.create_table("sequences", pa.table({"drop_id": ["d1", "d1"], "tokens": [[1, 2], [3, 4]]}))
    table.add(pa.table({"drop_id": ["d2"], "tokens": [[5, 6]]}))
    version = table.version
    with registry.start_run(home.settings, run_name="refresh-d2", tags={"amr.line": "main"}) as run:
        registry.log_params_flat(home.settings)
        registry.log_memory_input(str(tmp_path / "memory"), version, ["d1", "d2"])
        mlflow.log_metric("loss/d1", 2.5)
    got = home.client.get_run(run.info.run_id)
    assert got.data.params["ingest.context_length"] == "64" and got.data.metrics["loss/d1"] == 2.5
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=registry.REPO, capture_output=True, text=True)
    tags = got.data.tags
    assert tags["amr.git_rev"] == (rev.stdout.strip() if rev.returncode == 0 else "unknown")
    assert tags["amr.strategy"] == home.settings.replay.strategy and tags["amr.line"] == "main"
    assert tags["amr.memory_version"] == str(version) and tags["amr.drops"] == "d1,d2"
    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.source_type == "lancedb" and len(dataset_input.dataset.digest) == 16
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    source = mlflow.data.get_source(dataset_input)
    assert isinstance(source, registry.LanceDBSource) and source.version == version
    assert source.load().count_rows() == 3  # the recorded version, loaded back through the source
    assert registry.LanceDBSource(source.uri, version - 1).load().count_rows() == 2


# ---- model versions ----------------------------------------------------------------------------------------


def test_model_version_loads_offline_from_the_alias_with_the_same_predictions(home, tiny, no_network):
    run, mv = log_version(home.settings, tiny.dir, NAME, {"drops": ["d1"], "memory_version": 2, "tokenizer": "byte"})
    assert str(mv.version) == "1" and mv.run_id == run.info.run_id
    assert mv.tags["amr.drops"] == "d1" and mv.tags["amr.memory_version"] == "2" and mv.tags["amr.tokenizer"] == "byte"
    registry.set_champion(home.client, NAME, mv.version, PROMOTE)

    rows = token_rows() + [[7], []]  # a one-token row predicts nothing (NaN loss); an empty row has no next token
    want_loss, want_next = reference(tiny.model, rows[:-1])
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        served = mlflow.pyfunc.load_model(uri)
        got = served.predict(pd.DataFrame({"input_ids": rows}))
        assert list(got.columns) == ["loss", "perplexity", "next_token"] and len(got) == len(rows)
        np.testing.assert_allclose(got["loss"].to_numpy()[:-1], want_loss, rtol=1e-5, equal_nan=True)
        assert np.isnan(got["loss"].iloc[-2]) and np.isnan(got["loss"].iloc[-1])
        assert got["next_token"].tolist() == [*want_next.tolist(), -1]
    assert served.metadata.metadata == {"drops": ["d1"], "memory_version": 2, "tokenizer": "byte"}
    assert served.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    with pytest.raises(Exception, match="token ids must lie"):
        served.predict(pd.DataFrame({"input_ids": [[1, 999]]}))


def test_no_pickle_anywhere_in_the_artifact_tree(home, tiny):
    run, mv = log_version(home.settings, tiny.dir, home.name)
    files = files_under(home.root / "mlartifacts")
    assert any(f.endswith("model.safetensors") for f in files) and any(f.endswith("serving.py") for f in files)
    assert not [f for f in files if f.endswith(registry.PICKLE_SUFFIXES)], files
    requirements = next(home.root.glob("mlartifacts/**/requirements.txt")).read_text()
    assert "torch==" in requirements and "+cpu" not in requirements


def test_unsafe_weight_dirs_are_refused_before_anything_is_logged(home, tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny.dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "pytorch_model.bin").write_bytes(b"not loaded, only refused")
    with registry.start_run(home.settings), pytest.raises(RegistryError, match="pytorch_model.bin"):
        registry.log_model_version(bad, {}, home.name)
    with pytest.raises(RegistryError, match="config.json and"):
        registry.check_safe_weights(tmp_path)
    with pytest.raises(RegistryError, match="active run"):
        registry.log_model_version(tiny.dir, {}, home.name)
    assert registry.champion_version(home.client, home.name) is None
    assert home.client.search_model_versions(f"name='{home.name}'") == []


def test_load_weights_returns_the_same_safetensors_for_warm_start(home, tiny, tmp_path):
    _, mv = log_version(home.settings, tiny.dir, home.name)
    registry.set_champion(home.client, home.name, mv.version, PROMOTE)
    weights = registry.load_weights(f"models:/{home.name}@champion", dst=tmp_path / "download")
    assert weights.is_relative_to(tmp_path / "download") and (weights / "model.safetensors").is_file()
    loaded = load_model(weights).state_dict()
    for key, value in tiny.model.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ---- aliases -----------------------------------------------------------------------------------------------


def test_champion_previous_rejection_manual_and_rollback(home, tiny, tmp_path):
    client = home.client
    assert registry.champion_version(client, home.name) is None  # no registered model yet
    runs, versions = zip(*(log_version(home.settings, tiny.dir, home.name) for _ in range(3)), strict=True)
    v1, v2, v3 = (str(mv.version) for mv in versions)

    first = registry.apply_decision(client, home.name, v1, PROMOTE)  # the flow's one call: promote or record
    assert aliases(client, home.name) == {"champion": v1} and first.tags["amr.gate"] == "promoted"

    second = registry.set_champion(client, home.name, v2, PROMOTE)
    assert aliases(client, home.name) == {"champion": v2, "previous": v1}
    assert second.tags["amr.gate"] == "promoted" and second.tags["amr.gate_reasons"] == "; ".join(PROMOTE.reasons)
    report = mlflow.artifacts.download_artifacts(run_id=runs[1].info.run_id, artifact_path="gate/report.md")
    assert Path(report).read_text() == PROMOTE.to_markdown()

    with pytest.raises(MlflowException):
        registry.set_champion(client, home.name, "99", PROMOTE)  # no such version: nothing moves
    with pytest.raises(RegistryError, match="rejected"):
        registry.set_champion(client, home.name, v3, REJECT)
    rejected = registry.apply_decision(client, home.name, v3, REJECT)
    assert rejected.tags["amr.gate"] == "rejected" and "regression" in rejected.tags["amr.gate_reasons"]
    assert aliases(client, home.name) == {"champion": v2, "previous": v1}  # nothing moved
    with pytest.raises(RegistryError, match="promote"):
        registry.record_rejection(client, home.name, v3, PROMOTE)

    manual = registry.set_champion(client, home.name, v3, override(REJECT, "on-call"), manual=True)
    assert manual.tags["amr.gate"] == "manual" and manual.tags["amr.gate_reasons"].startswith(
        "manual override: on-call"
    )
    assert aliases(client, home.name) == {"champion": v3, "previous": v2}
    report = mlflow.artifacts.download_artifacts(run_id=runs[2].info.run_id, artifact_path="gate/report.md")
    assert Path(report).read_text().startswith("**Manual override**")

    registry.set_champion(client, home.name, v3, PROMOTE)  # re-promoting the champion keeps `previous` as it was
    assert aliases(client, home.name) == {"champion": v3, "previous": v2}

    back = registry.rollback_champion(client, home.name)
    assert str(back.version) == v2 and str(registry.champion_version(client, home.name).version) == v2
    assert aliases(client, home.name) == {"champion": v2}
    assert client.get_model_version(home.name, v3).tags["amr.rolled_back"] == f"champion back to {v2}"
    with pytest.raises(RegistryError, match="no 'previous'"):
        registry.rollback_champion(client, home.name)


def test_long_reasons_are_truncated_to_the_tag_limit(home, tiny):
    _, mv = log_version(home.settings, tiny.dir, home.name)
    long = override(None, "x" * 20_000)
    tagged = registry.set_champion(home.client, home.name, mv.version, long)
    reasons = tagged.tags["amr.gate_reasons"]
    assert len(reasons) == registry.REASONS_LIMIT and reasons.endswith("(truncated; see gate/report.md)")
    report = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="gate/report.md")
    assert "x" * 20_000 in Path(report).read_text()  # the report keeps everything


# ---- a real tracking server ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_against_a_real_mlflow_server(mlflow_server, tiny, tmp_path, clean_mlflow, no_network):
    settings = settings_for(tmp_path / "amr")
    settings.mlflow.tracking_uri = mlflow_server.url
    assert registry.configure(settings) == mlflow_server.url
    client = MlflowClient()
    with registry.start_run(settings, run_name="server") as run:
        registry.log_params_flat(settings)
        registry.log_memory_input("s3://bucket/memory", 4, ["d1", "d2", "d3"])
        mv = registry.log_model_version(tiny.dir, {"drops": ["d1", "d2", "d3"]}, NAME)
    registry.set_champion(client, NAME, mv.version, PROMOTE)
    assert registry.champion_version(client, NAME).version == mv.version and mv.tags["amr.drops"] == "d1,d2,d3"

    rows = token_rows(3)
    got = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(pd.DataFrame({"input_ids": rows}))
    np.testing.assert_allclose(got["loss"].to_numpy(), reference(tiny.model, rows)[0], rtol=1e-5)
    weights = registry.load_weights(f"models:/{NAME}@champion", dst=tmp_path / "dl")
    assert (weights / "model.safetensors").read_bytes() == (tiny.dir / "model.safetensors").read_bytes()

    stored = files_under(mlflow_server.artifacts)  # what the server wrote, seen from its own disk
    assert any(f.endswith("model.safetensors") for f in stored) and any(f.endswith("gate/report.md") for f in stored)
    assert not [f for f in stored if f.endswith(registry.PICKLE_SUFFIXES)], stored
    source = mlflow.data.get_source(client.get_run(run.info.run_id).inputs.dataset_inputs[0])
    assert (source.uri, source.version) == ("s3://bucket/memory", 4)
    assert not (tmp_path / "amr" / "mlflow.db").exists()  # nothing went to the local default store


def test_an_unreachable_tracking_server_is_one_line_with_the_fix(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from components.cli import app
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = settings_for(tmp_path / "home")
    cfg.mlflow.tracking_uri = dead
    with pytest.raises(registry.RegistryError, match=f"MLflow tracking server {dead} did not answer.*Fix: start it"):
        registry.configure(cfg)
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AMR_MLFLOW__TRACKING_URI", dead)
    res = CliRunner().invoke(app, ["promote", "1"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"MLflow tracking server {dead} did not answer" in said and "Traceback" not in said
