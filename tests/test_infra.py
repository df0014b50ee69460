"""infra/: the compose file, the Dockerfile and the Kubernetes manifests checked offline; `make stack` for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SECRETS = ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "RAY_AUTH_TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_names_the_whole_stack_and_its_gpus(compose):
    services = compose["services"]
    assert {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker", "trainer"} <= set(services)
    for name in ("prefect-worker", "trainer"):  # the training containers reserve the host's NVIDIA GPUs
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in gpu_devices(services[name])), name
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    mlflow = services["mlflow"]["environment"]
    assert re.match(
        r"postgresql://amr:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/mlflow$", mlflow["MLFLOW_BACKEND_STORE_URI"]
    )
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    prefect = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect.startswith("postgresql+asyncpg://") and prefect.endswith("@postgres:5432/prefect")
    worker = services["prefect-worker"]
    assert "amr-gpu" in worker["command"]  # the pool of prefect.yaml's deployments
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["AMR_MEMORY__URI"].startswith("s3://")
    assert "CREATE DATABASE mlflow" in (INFRA / "postgres" / "init.sql").read_text()


def test_compose_references_resolve_and_secrets_stay_outside(compose):
    services, volumes = compose["services"], set(compose["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            assert source in volumes or (INFRA / source).exists(), f"{name}: {source}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (INFRA / "docker-compose.yml").read_text()
    for secret in SECRETS:  # required from the environment: no default value, so no password in the file
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (secret, uses)
    for name, svc in services.items():
        for key, value in svc.get("environment", {}).items():
            if re.search("PASSWORD|SECRET", key) or re.search(r"://[^/@]+:[^/@]+@", str(value)):
                assert "${" in str(value), f"{name}: {key} holds a literal secret"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0,
    reason="docker compose is not installed (the engine is not needed, only the CLI plugin)",
)
def test_docker_compose_config_accepts_the_file():
    env = dict(os.environ, POSTGRES_PASSWORD="x", S3_SECRET_KEY="y", RAY_AUTH_TOKEN="z")
    cmd = ["docker", "compose", "-f", str(INFRA / "docker-compose.yml"), "config", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_dockerfile_builds_a_cuda_training_image():
    text = (INFRA / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cu" in text and "torch==${TORCH_VERSION}" in text
    assert re.search(r"^USER amr$", text, re.M) and "constraints.txt" in text
    for source in re.findall(r"^COPY (?!--)(\S+) ", text, re.M):
        assert (ROOT / source).exists(), source
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".amr", ".git"} <= set(ignored)


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_are_well_formed():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    docs = k8s_documents()
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    mlflow = by_kind[("Deployment", "mlflow")]
    pod = mlflow["spec"]["template"]
    assert mlflow["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert by_kind[("Service", "mlflow")]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert (
        container["command"][:2] == ["mlflow", "server"] and container["readinessProbe"]["httpGet"]["path"] == "/health"
    )
    assert {"amr-mlflow", "amr-s3"} <= {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    worker = by_kind[("Deployment", "prefect-worker")]["spec"]["template"]["spec"]
    assert "kubernetes" in worker["containers"][0]["command"] and worker["serviceAccountName"] == "prefect-worker"
    rules = by_kind[("Role", "prefect-worker")]["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)


def test_the_ray_cluster_runs_the_amr_image_with_credentials_from_secrets(compose):
    """ingest.engine ray: a KubeRay RayCluster and the compose `ray` profile, head plus workers, one image."""
    cluster = next(d for d in k8s_documents() if d["kind"] == "RayCluster")
    assert (
        cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] in (ROOT / "constraints.txt").read_text()
    )
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    groups = cluster["spec"]["workerGroupSpecs"]
    assert len(groups) == 1 and groups[0]["replicas"] >= 1
    for pod in (head, groups[0]["template"]["spec"]):
        container = pod["containers"][0]
        assert container["image"].startswith("amr-pipeline") and container["resources"]["requests"]["memory"]
        assert {"amr-config", "amr-s3"} <= {next(iter(e.values()))["name"] for e in container["envFrom"]}
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert not any(re.search("SECRET|PASSWORD", name) for name in env)  # credentials only from Secrets
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm"}
    assert {p["containerPort"] for p in head["containers"][0]["ports"]} >= {6379, 10001}
    services = compose["services"]
    head_svc, worker = services["ray-head"], services["ray-worker"]
    assert head_svc["profiles"] == worker["profiles"] == ["ray"]
    assert "--head" in head_svc["command"] and "--address=ray-head:6379" in worker["command"]
    assert worker["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?")
    assert (
        worker["environment"]["AMR_INGEST__RAY_ADDRESS"]
        == "ray-head:6379"
        == services["trainer"]["environment"]["AMR_INGEST__RAY_ADDRESS"]
    )
    assert '".[ray]"' in (INFRA / "Dockerfile").read_text()


def test_every_mlflow_server_runs_without_the_job_runner(compose, monkeypatch):
    """MLflow 3.x's job runner and its seven huey consumers (~1.8 GB) serve GenAI jobs amr never submits."""
    off = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert off.items() <= compose["services"]["mlflow"]["environment"].items()
    container = next(d for d in k8s_documents() if d["metadata"]["name"] == "mlflow" and d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in container["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert off.items() <= env.items()
    spec = importlib.util.spec_from_file_location("amr_stack", INFRA / "stack.py")
    stack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "amr_stack", stack)  # its dataclass looks its module up there
    spec.loader.exec_module(stack)
    assert off.items() <= stack.Stack(Path("/nonexistent"), 1, 2, 3).services()["mlflow"][1].items()


def test_the_mlflow_server_fixture_is_one_worker_and_nothing_else(mlflow_server):
    import psutil

    server = psutil.Process(mlflow_server.pid)
    children = server.children(recursive=True)
    assert len(children) == 1 and "uvicorn" in children[0].cmdline(), [c.cmdline()[:4] for c in children]
    assert sum(p.memory_info().rss for p in [server, *children]) < 1024**3


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_renders_and_decodes_the_manifests_offline():
    """`kubectl create --dry-run=client` needs an API server for discovery; kustomize and `label --local` do not."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    names = subprocess.run(
        ["kubectl", "label", "--local", "-f", "-", "-o", "name", "amr-pipeline/checked=true"],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert {"deployment.apps/mlflow", "service/mlflow", "deployment.apps/prefect-worker"} <= set(names)
    assert {"configmap/amr-config", "persistentvolumeclaim/amr-home", "namespace/amr"} <= set(names)
    assert all(
        d["metadata"].get("namespace") == "amr" for d in yaml.safe_load_all(rendered) if d["kind"] != "Namespace"
    )


def test_work_pool_job_template_requests_gpus():
    template = json.loads((K8S / "work-pool-gpu.json").read_text())
    WorkPoolCreate(name="amr-k8s-gpu", type="kubernetes", base_job_template=template)  # Prefect's own validation
    variables = template["variables"]["properties"]
    values = {k: v["default"] for k, v in variables.items() if "default" in v}
    job = apply_values(template["job_configuration"], values | {"gpus": 4, "name": "refresh", "command": "run"})
    spec = job["job_manifest"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["name"] == "prefect-job" and spec["restartPolicy"] == "Never"  # what the Kubernetes worker needs
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"] == 4 == container["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/data/amr"]]["persistentVolumeClaim"]["claimName"] == "amr-home"
    assert job["env"] == {"AMR_TRAIN__NPROC": "1"} and variables["gpus"]["default"] == 1


@pytest.mark.slow
def test_make_stack_starts_answers_health_checks_and_stops(tmp_path):
    ports = {"PREFECT": free_port(), "MLFLOW": free_port(), "S3": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMR_", "MLFLOW_", "PREFECT_API"))}
    env |= {f"AMR_STACK_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"AMR_STACK_DIR": str(tmp_path / "stack"), "AMR_STACK_TIMEOUT": "75"}
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]  # never reinstall from inside a test
    pid_files = [tmp_path / "stack" / f"{name}.pid" for name in ("s3", "mlflow", "prefect")]
    pids: list[int] = []
    try:
        up = subprocess.run(make + ["stack"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=85)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        exported = dict(re.findall(r"^export (\w+)=(.*)$", (tmp_path / "stack" / "env").read_text(), re.M))
        assert exported["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['PREFECT']}/api"
        assert exported["AMR_MEMORY__URI"].startswith("s3://")
        for url in (f"{exported['PREFECT_API_URL']}/health", f"{exported['MLFLOW_TRACKING_URI']}/health"):
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200, url
        import boto3

        keys = {k.lower(): exported[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        s3 = boto3.client("s3", endpoint_url=exported["AWS_ENDPOINT_URL"], region_name="us-east-1", **keys)
        buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        assert {"amr-memory", "amr-mlflow"} <= buckets
        pids += [json.loads(p.read_text())["pid"] for p in pid_files]
        import psutil

        mlflow = psutil.Process(pids[1]).children(recursive=True)  # its uvicorn worker, no job runner or consumers
        assert len(mlflow) == 1, [p.cmdline()[:4] for p in mlflow]
        status = subprocess.run([sys.executable, "infra/stack.py", "status"], cwd=ROOT, env=env, capture_output=True)
        assert status.returncode == 0
    finally:
        down = subprocess.run(make + ["stack-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not any(p.exists() for p in pid_files)
    assert pids and not any(running(pid) for pid in pids)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
