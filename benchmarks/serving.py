"""Serving benchmark (not in CI): the registered model answering text, in process and over REST.

    python benchmarks/serving.py [--rows 8] [--reps 5] [--new-tokens 32] [--rest]

The project's default model (gpt2-tiny from the default `train` settings: byte tokens, 128 positions) is registered
in a temporary SQLite store exactly as a refresh does (`registry.log_model_version`, tokenizer bundled), loaded
back with `mlflow.pyfunc.load_model`, and asked:
1. scoring: `--rows` rows of real text (Python sources, man pages) per call, 100 bytes (within the positions)
   and 1,000 bytes (15 windows each); tokens scored per second;
2. continuation: `--new-tokens` tokens per row, greedy and sampled (temperature 1, top_p 0.9); tokens per second;
3. with `--rest`: `mlflow models serve` on loopback, its time to answer /ping, and one text request's latency.
Wall and CPU seconds (this process) per phase, with the load average: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import torch
from common import latency_summary, machine_info, markdown_table, real_documents, write_results

from components.adapters import registry
from components.core.config import load_settings
from components.training.model import build_model, save_model


def timed_calls(fn, reps: int) -> tuple[list[float], float]:
    walls, cpu0 = [], time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return walls, time.process_time() - cpu0


def rest(uri: str, tracking: str, texts: list[str], new_tokens: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = tracking
    cmd = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - t0 < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        ready = time.perf_counter() - t0
        body = json.dumps({"dataframe_records": [{"text": t} for t in texts], "params": {"max_new_tokens": new_tokens}})
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
        )

        def call():
            with urllib.request.urlopen(req, timeout=120) as resp:
                json.load(resp)

        walls, _ = timed_calls(call, 3)
        return {"ready_s": round(ready, 2), "request": latency_summary(walls, len(texts))}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rest", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    docs, _ = real_documents(200_000, kinds=("python", "man-pages"))
    docs = [d for d in docs if len(d.encode()) >= 1_000][: args.rows]
    with tempfile.TemporaryDirectory(prefix="amr-serving-bench-") as tmp:
        settings = load_settings(None)
        settings.home = Path(tmp)
        torch.manual_seed(0)
        model = build_model(settings.train, 384, settings.ingest.context_length, eos_id=1, pad_id=0)
        save_model(model, Path(tmp) / "weights")
        registry.configure(settings)
        with registry.start_run(settings, run_name="bench"):
            mv = registry.log_model_version(Path(tmp) / "weights", {"tokenizer": "byte"}, "bench")
        uri = f"models:/bench/{mv.version}"
        t0, c0 = time.perf_counter(), time.process_time()
        served = mlflow.pyfunc.load_model(uri)
        phases = {"load": {"wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}}
        for name, size in (("score_100B", 100), ("score_1000B", 1_000)):
            frame = pd.DataFrame({"text": [d.encode()[:size].decode("utf-8", "ignore") for d in docs]})
            tokens = sum(len(t.encode()) for t in frame["text"])
            walls, cpu = timed_calls(lambda f=frame: served.predict(f), args.reps)
            phases[name] = latency_summary(walls, tokens) | {"cpu_s": round(cpu, 3), "tokens_per_call": tokens}
        frame = pd.DataFrame({"text": [d[:100] for d in docs]})
        for name, params in (("greedy", {}), ("sampled", {"temperature": 1.0, "top_p": 0.9, "seed": 1})):
            params = params | {"max_new_tokens": args.new_tokens}
            walls, cpu = timed_calls(lambda p=params: served.predict(frame, params=p), args.reps)
            new = args.new_tokens * len(docs)  # an upper bound: a row stops early at eos
            phases[f"continue_{name}"] = latency_summary(walls, new) | {"cpu_s": round(cpu, 3)}
        if args.rest:
            phases["rest"] = rest(uri, mlflow.get_tracking_uri(), [d[:100] for d in docs], args.new_tokens)
    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_info(("torch", "transformers", "mlflow")),
        "phases": phases,
    }
    rows = [
        [k, v.get("p50_ms", "-"), v.get("items_per_s_at_p50", "-"), v.get("cpu_s", "-")]
        for k, v in phases.items()
        if k != "rest"
    ]
    md = "# Serving (gpt2-tiny, byte tokens)\n\n" + markdown_table(
        ["phase", "p50 ms/call", "tokens/s at p50", "CPU s (all calls)"], rows
    )
    if "rest" in phases:
        md += (
            f"\n\nREST: ready after {phases['rest']['ready_s']} s; request p50 {phases['rest']['request']['p50_ms']} ms"
        )
    md += f"\n\nload average (1, 5, 15 min) at the end: {payload['machine']['load_average_1_5_15']}"
    write_results(args.out, "serving", payload, md)
    print(md)


if __name__ == "__main__":
    main()
