"""The refresh flow end to end under Prefect's test harness, with real LanceDB, MLflow and a tiny model."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from components.adapters.locks import RefreshBusy
from components.core.config import load_settings
from components.refresh.steps import refresh_lock
from components.training.trainer import Trainer
from tests.helpers import three_drops

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "TRAIN__N_LAYER": 1,
    "TRAIN__N_EMBD": 32,
    "TRAIN__N_HEAD": 2,
    "TRAIN__BATCH_SIZE": 8,
    "TRAIN__MAX_STEPS": 6,
    "TRAIN__WARMUP_STEPS": 2,
    "INGEST__CONTEXT_LENGTH": 64,
    "INGEST__CLUSTERS_PER_DROP": 2,
    "REPLAY__STRATEGY": "amr",  # the bandit's state and per-cluster arm probabilities are logged
    "REPLAY__ARMS": "cluster",  # (params.yaml ships balanced with drop arms)
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(tmp_path, monkeypatch):
    """AMR_HOME in tmp_path, a tiny model, MLflow on the home's SQLite, and three drops of real text."""
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    for key, value in TINY.items():
        monkeypatch.setenv(f"AMR_{key}", str(value))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    three_drops(tmp_path / "drops")
    return tmp_path


def run_refresh(source: Path, **kwargs) -> list[dict]:
    from flows.refresh import refresh

    return refresh(str(source), **kwargs)


def gate_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), offset=0)
    assert found, f"no Prefect artifact {key}"
    return found[0].data


def runs_by_drop(client: MlflowClient) -> dict[str, mlflow.entities.Run]:
    exp = client.get_experiment_by_name("amr")
    return {r.data.tags["amr.drop"]: r for r in client.search_runs([exp.experiment_id])}


def test_refresh_records_everything_and_moves_the_champion(env):
    reports = run_refresh(env / "drops")
    assert [r.drop_id for r in reports] == ["d1-code", "d2-licenses", "d3-docs"]
    assert [r.version for r in reports] == ["1", "2", "3"]
    client = MlflowClient()
    runs = runs_by_drop(client)
    assert set(runs) == {"d1-code", "d2-licenses", "d3-docs"}
    for drop, run in sorted(runs.items()):
        assert run.data.params["train.batch_size"] == "8" and run.data.params["replay.strategy"] == "amr"
        assert run.data.tags["amr.memory_version"] == "4" and run.data.tags["amr.git_rev"]  # all 3 ingested first
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
        assert "eval/forgetting_avg" in run.data.metrics and f"eval/loss/{drop}" in run.data.metrics
        assert run.inputs.dataset_inputs[0].dataset.name == "amr-memory"
        files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert {"eval/loss_matrix.csv", "eval/loss_matrix.png", "eval/loss_matrix.json"} <= files
        assert {a.path for a in client.list_artifacts(run.info.run_id, "gate")} >= {"gate/report.md"}
    later = runs["d3-docs"].info.run_id
    assert {a.path for a in client.list_artifacts(later, "sampler")} == {
        "sampler/state.json",
        "sampler/arm_probabilities.png",
    }
    assert any(k.startswith("arm_p/d1-code/") for k in runs["d3-docs"].data.metrics)
    # the gate: every decision recorded on its version; the champion is the last promoted one
    versions = {mv.version: mv for mv in client.search_model_versions("name='amr-model'")}
    assert {str(v) for v in versions} == {"1", "2", "3"}
    promoted = [r.version for r in reports if r.promote]
    assert promoted and promoted[0] == "1"  # no champion yet: the first finite candidate is promoted
    assert str(client.get_model_version_by_alias("amr-model", "champion").version) == promoted[-1]
    for r in reports:
        tags = client.get_model_version("amr-model", r.version).tags
        assert tags["amr.gate"] == ("promoted" if r.promote else "rejected")
    assert "Gate: PROMOTE" in gate_artifact("gate-main-d1-code")
    # nothing new: no training, no new run
    assert run_refresh(env / "drops") == []
    assert len(runs_by_drop(client)) == 3


def test_champion_stays_when_the_gate_rejects(env, monkeypatch):
    monkeypatch.setenv("AMR_GATE__MIN_GAIN", "0.9")  # the new drop must improve by 90% on the champion: never
    reports = run_refresh(env / "drops")
    assert [r.promote for r in reports] == [True, False, False]
    assert any("gain" in reason for reason in reports[1].reasons)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("amr-model", "champion").version) == "1"
    assert client.get_model_version("amr-model", "3").tags["amr.gate"] == "rejected"
    # the manual override and the rollback, as an operator would use them
    from components.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["promote", "3", "--note", "accepted by hand"])
    assert res.exit_code == 0, res.output
    assert str(client.get_model_version_by_alias("amr-model", "champion").version) == "3"
    assert client.get_model_version("amr-model", "3").tags["amr.gate"] == "manual"
    res = runner.invoke(app, ["rollback-model"])
    assert res.exit_code == 0 and "version 1" in res.output


def test_a_second_refresh_does_not_run_while_one_holds_the_memory(env):
    settings = load_settings()
    held, release = threading.Event(), threading.Event()

    def hold():
        with refresh_lock(settings):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(RefreshBusy, match="another refresh or training is writing"):
            run_refresh(env / "drops")
        from components.cli import app

        for command in (["refresh", str(env / "drops")], ["train"], ["evaluate"], ["promote", "1"], ["rollback-model"]):
            res = CliRunner().invoke(app, command)  # every writer of the home: exit 3 at once, no traceback
            said = " ".join(res.output.split())
            assert res.exit_code == 3 and "another refresh or training is writing" in said, (command, res.output)
            assert "Traceback" not in said
    finally:
        release.set()
        thread.join()
    assert not (settings.home / "lines" / "main" / "state.json").exists()  # nothing trained meanwhile


def test_a_retried_training_task_resumes_from_its_checkpoint(env, monkeypatch):
    import flows.refresh as flow_module

    monkeypatch.setenv("AMR_TRAIN__MAX_STEPS", "8")
    monkeypatch.setenv("AMR_TRAIN__CHECKPOINT_EVERY", "4")
    monkeypatch.setattr(flow_module, "train", flow_module.train.with_options(retry_delay_seconds=0))
    original, calls = Trainer.step, {"n": 0}

    def flaky(self, tokens, lengths):
        calls["n"] += 1
        if calls["n"] == 8 + 6:  # the 6th step of the second drop, after its step-4 checkpoint
            raise RuntimeError("simulated worker crash")
        return original(self, tokens, lengths)

    monkeypatch.setattr(Trainer, "step", flaky)
    reports = run_refresh(env / "drops")
    assert [r.resumed_from_step for r in reports] == [0, 4, 0]
    assert calls["n"] == 8 + 6 + (8 - 4) + 8  # d1, d2 up to the crash, the retry redoes steps 5..8 only, d3
    run = runs_by_drop(MlflowClient())["d2-licenses"]
    assert run.data.tags["amr.resumed_from_step"] == "4"


def test_force_redoes_the_last_drop(env):
    run_refresh(env / "drops")
    reports = run_refresh(env / "drops", force=True)
    assert [r.drop_id for r in reports] == ["d3-docs"] and reports[0].version == "4"
    state = yaml.safe_load((Path(load_settings().home) / "lines" / "main" / "state.json").read_text())
    assert state["trained"] == ["d1-code", "d2-licenses", "d3-docs"]
    assert state["loss_matrix"]["rows"] == ["d1-code", "d2-licenses", "d3-docs"]


def test_deployment_runs_refresh_on_a_cron_schedule():
    from flows.refresh import refresh

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "amr-refresh")
    assert deployment["schedules"][0]["cron"] == "0 3 * * *"
    assert deployment["concurrency_limit"] == 1
    path, name = deployment["entrypoint"].split(":")
    assert (ROOT / path).exists() and name == refresh.fn.__name__
    served = refresh.to_deployment(name="amr-refresh", cron="0 3 * * *", parameters={"source": "/data/drops"})
    assert served.schedules[0].schedule.cron == "0 3 * * *"
    assert served.parameters == {"source": "/data/drops"}


def test_refresh_against_a_real_mlflow_server(env, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("AMR_TRAIN__MAX_STEPS", "3")
    reports = run_refresh(env / "drops")
    assert len(reports) == 3
    client = MlflowClient(mlflow_server.url)
    assert str(client.get_model_version_by_alias("amr-model", "champion").version) == reports[-1].version or any(
        not r.promote for r in reports
    )
    assert any((mlflow_server.artifacts).rglob("model.safetensors"))  # weights went through the server's store
