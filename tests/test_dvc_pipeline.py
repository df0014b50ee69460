"""The project's own dvc.yaml under the real `dvc` CLI: `dvc repro` on a tiny model, then what a DVC user runs next
(`dvc status`, `dvc metrics show`, `dvc plots show`, `dvc exp run --set-param`, `dvc exp show`)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.helpers import three_drops
from tests.test_rollback import make_repo, sh

pytestmark = pytest.mark.slow

TINY = {
    "AMR_TRAIN__N_LAYER": "1",
    "AMR_TRAIN__N_EMBD": "32",
    "AMR_TRAIN__N_HEAD": "2",
    "AMR_TRAIN__BATCH_SIZE": "8",
    "AMR_TRAIN__MAX_STEPS": "4",
    "AMR_TRAIN__WARMUP_STEPS": "1",
    "AMR_INGEST__CONTEXT_LENGTH": "64",
    "AMR_INGEST__CLUSTERS_PER_DROP": "2",
    "AMR_EVALUATE__MAX_SEQUENCES_PER_DROP": "32",
    "AMR_EVALUATE__REFERENCE_SEQUENCES_PER_ARM": "8",
}
DROPS = ["d1-code", "d2-licenses"]
PNG = b"\x89PNG\r\n\x1a\n"


def params_of(entry: dict) -> dict:
    return entry.get("data", {}).get("params", {}).get("params.yaml", {}).get("data", {})


def test_dvc_repro_metrics_plots_and_an_experiment(tmp_path, monkeypatch):
    for key, value in (TINY | {"AMR_HOME": str(tmp_path / "home")}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_repo(tmp_path)
    three_drops(tmp_path / "all")
    for name in DROPS:
        shutil.copytree(tmp_path / "all" / name, repo / "data" / "drops" / name)
    sh(repo, "dvc", "add", "-q", "data/drops")

    sh(repo, "dvc", "repro")
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}
    lock = json.loads((repo / "memory.lock.json").read_text())
    assert [d["drop_id"] for d in lock["drops"]] == DROPS and lock["rows"] > 0
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    m = shown[""]["data"]["metrics/refresh.json"]["data"]
    assert m["refreshes"] == 2 and m["drop"] == "d2-licenses" and m["memory_version"] == lock["memory_version"]
    assert set(m["loss"]) == set(DROPS) and all(math.isfinite(v) for v in m["loss"].values())
    assert m["forgetting_avg"] >= 0 and m["forgetting"].keys() == {"d1-code"} and math.isfinite(m["plasticity"])
    assert m["gate"]["model_version"] == 2 and m["gate"]["decision"] in ("promoted", "rejected")
    history = (repo / "metrics" / "history.csv").read_text().splitlines()
    assert history[0].startswith("refresh,drop,forgetting_avg") and [r.split(",")[1] for r in history[1:]] == DROPS

    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots")))["data"]
    assert set(plots) == {
        "forgetting over refreshes",
        "plasticity over refreshes",
        "metrics/forgetting.png",
        "metrics/arm_probabilities.png",
    }
    values = plots["forgetting over refreshes"][0]["content"]["data"]["values"]
    assert {v["refresh"] for v in values} == {"1", "2"}
    for image in ("metrics/forgetting.png", "metrics/arm_probabilities.png"):
        assert (tmp_path / "plots" / f"workspace_{image.replace('/', '_')}").read_bytes().startswith(PNG)

    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline on two drops")
    sh(repo, "dvc", "exp", "run", "-S", "gate.max_forgetting=0.2")
    rows = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    runs = [e for row in rows for group in row.get("experiments") or [] for e in group["revs"]]
    assert [params_of(e)["gate"]["max_forgetting"] for e in runs] == [0.2]
    assert runs[0]["data"]["metrics"]["metrics/refresh.json"]["data"]["refreshes"] == 2
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}
