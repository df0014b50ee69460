"""What Prefect + MLflow orchestration costs: `amr refresh` against the same components called directly.

Both variants run the same work on the demo drops (built from real text on this machine) in fresh processes,
each with its own AMR_HOME, so imports, the temporary Prefect server and MLflow's SQLite setup are all counted:

* `flow`:   `amr refresh DROPS` (the Prefect flow: tasks, retries, artifacts, a temporary local API server)
* `direct`: one Python process calling ingest_source, then open_run/train_step/evaluate_step/register_step/
            gate_step of components.refresh.steps for every drop (MLflow still records everything; no Prefect)

The runs alternate (flow, direct, flow, direct, ...) so machine noise hits both alike; the ratio of medians and the
fixed overhead in seconds (flow - direct) are reported.

    python benchmarks/orchestration.py [--reps 2] [--max-steps 20] [--budget-kb 200] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIRECT = """
import sys
from components.core.config import load_settings
from components.ingest import ingest_source
from components.adapters.lines import Line
from components.refresh import steps

settings = load_settings()
ingest_source(settings, sys.argv[1], show_progress=False)
line = Line(settings.home, "main")
for drop in steps.drops_to_train(settings, line):
    run_id = steps.open_run(settings, line, drop)
    steps.train_step(settings, line, drop, run_id)
    ev = steps.evaluate_step(settings, line, drop, run_id)
    version = steps.register_step(settings, line, drop, run_id)
    steps.gate_step(settings, line, drop, ev, version, run_id)
"""


def run(variant: str, drops: Path, home: Path, env: dict[str, str]) -> float:
    cmd = (
        [sys.executable, "-m", "components.cli", "refresh", str(drops)]
        if variant == "flow"
        else [sys.executable, "-c", DIRECT, str(drops)]
    )
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, AMR_HOME=str(home)), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=20, help="training steps per drop (small: overhead matters)")
    parser.add_argument("--budget-kb", type=int, default=200, help="text per demo drop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from components.ingest.demo import build_demo_drops

    work = Path(tempfile.mkdtemp(prefix="amr-orch-"))
    drops = work / "drops"
    build_demo_drops(drops, budget_bytes=args.budget_kb * 1000)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        AMR_TRAIN__MAX_STEPS=str(args.max_steps),
        HF_HUB_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)  # both variants on the embedded defaults
    load = os.getloadavg()
    times: dict[str, list[float]] = {"flow": [], "direct": []}
    for rep in range(args.reps):
        for variant in ("flow", "direct") if rep % 2 == 0 else ("direct", "flow"):
            seconds = run(variant, drops, work / f"{variant}-{rep}", env)
            times[variant].append(seconds)
            print(f"rep {rep} {variant:>6}: {seconds:.1f}s", flush=True)
    flow, direct = statistics.median(times["flow"]), statistics.median(times["direct"])
    payload = {
        "config": {
            "reps": args.reps,
            "max_steps_per_drop": args.max_steps,
            "budget_kb_per_drop": args.budget_kb,
            "drops": sorted(p.name for p in drops.iterdir()),
        },
        "machine": machine_info(("prefect", "mlflow", "lancedb", "torch"))
        | {"loadavg_start": load, "loadavg_end": os.getloadavg()},
        "seconds": times,
        "median_seconds": {"flow": flow, "direct": direct},
        "ratio_flow_over_direct": flow / direct,
        "fixed_overhead_seconds": flow - direct,
    }
    table = markdown_table(
        ["variant", "median s", "runs (s)"],
        [
            ["`amr refresh` (Prefect flow)", f"{flow:.1f}", ", ".join(f"{t:.1f}" for t in times["flow"])],
            ["components called directly", f"{direct:.1f}", ", ".join(f"{t:.1f}" for t in times["direct"])],
        ],
    )
    md = (
        f"# Orchestration overhead\n\n{table}\n\nRatio flow/direct: **{flow / direct:.2f}**, fixed overhead "
        f"**{flow - direct:.1f} s** per refresh of {len(payload['config']['drops'])} demo drops "
        f"({args.max_steps} steps each, {args.budget_kb} kB of text per drop). Each run is a fresh process with its "
        f"own AMR_HOME (MLflow on SQLite, Prefect's temporary local server for the flow); runs alternate. Load average "
        f"at start {load[0]:.2f}.\n"
    )
    json_path, md_path = write_results(args.out, "orchestration", payload, md)
    print(md)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
