"""A real pretrained model through the pipeline (not in CI): SmolLM2-135M on a stream of real text (issue 13).

    python benchmarks/real_model.py --gguf PATH.gguf --home DIR [--steps 10]     # imports PATH as smollm2-135m
    python benchmarks/real_model.py --model smollm2-135m --home DIR              # a model already imported in DIR
    python benchmarks/real_model.py --model NAME --home DIR --steps 1000 --device cuda   # bf16 autocast on a GPU

`--home` is the AMR_HOME the model is imported into (`$home/models/NAME`, via `amr model import`'s own
`import_model`; an existing import of that name is reused); it must be a scratch directory, never the repository.
Every run then works in a fresh `$home/runs/real-<time>/` (its own memory, lines and drops, removed at the end
unless `--keep`): one drop per kind of real text (`--kinds`, `--mb` each, benchmarks/common.py), in that order.

Measured, each with the wall and CPU seconds and the load average beside it:
  tokenizer alone   the model's tokenizer (`load_tokenizer(...).encode_batch`) on the drops' documents
  ingest            `ingest_source` on the same text: read, tokenize, pack, cluster, write LanceDB; MB/s, tokens/s
  base loss         the `(base)` row of the loss matrix: the imported weights on each drop's held-out data
  none vs amr       one line per strategy from the same imported weights, at equal steps per drop
                    (`train_drop`, lr = `train.pretrained_lr`), evaluated after every drop (`evaluate_line`): train
                    tokens/s (predicted tokens over the drop's training wall time), the process's peak RSS after
                    training its first drop, the full loss matrix, forgetting against best-ever (the gate's measure)
                    and against the base row (`vs_base`)
Each line runs in its own spawned process (common.run_isolated) so its peak RSS is its own.

Cost on CPU: one optimizer step of 4 x 64 tokens of this 135M model took 50-130 s of wall time on the shared
2-core machine at a load average of 6-10, and every line loads and saves the 538 MB weights per drop; the
committed CPU result (benchmarks/results/real_model.md) is therefore `--steps 3 --eval-sequences 8
--reference-sequences 2 --parallel`: 19 minutes, 315 CPU s per line. A few steps at lr 1e-4 barely move a 135M
model, so the CPU figures are a smoke test of the path and its costs, not a measure of forgetting; `--steps 1000
--device cuda` is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from common import machine_info, markdown_table, peak_rss_mb, real_documents, run_isolated, write_drop, write_results

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.adapters.modelfiles import import_model
from components.core.config import Settings, load_settings, models_dir
from components.core.metrics import BASE_ROW
from components.core.text import load_tokenizer
from components.evaluation import evaluate_line
from components.ingest import exit_code, ingest_source
from components.training.loop import train_drop

START = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="A .gguf file to import (needs the [gguf] extra).")
    src.add_argument("--model", help="The name of a model already imported into --home (or a model directory).")
    p.add_argument("--name", default="smollm2-135m", help="Name to import --gguf as.")
    p.add_argument("--home", type=Path, default=None, help="Scratch AMR_HOME (default: a new temporary directory).")
    p.add_argument("--kinds", default="python,man-en,c-headers", help="Kinds of text, one drop each, in order.")
    p.add_argument("--mb", type=float, default=0.5, help="Text per drop.")
    p.add_argument("--steps", type=int, default=10, help="Optimizer steps per drop, for every strategy.")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--replay-fraction", type=float, default=0.25)
    p.add_argument("--arms", default="drop", choices=("drop", "cluster"))
    p.add_argument("--clusters", type=int, default=2, help="ingest.clusters_per_drop.")
    p.add_argument("--eval-sequences", type=int, default=16, help="evaluate.max_sequences_per_drop.")
    p.add_argument("--reference-sequences", type=int, default=4, help="evaluate.reference_sequences_per_arm.")
    p.add_argument("--strategies", default="none,amr")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="Run the strategies' lines at the same time (a busy shared CPU: each gets its share, under equal load).",
    )
    p.add_argument("--keep", action="store_true", help="Keep the run directory (memory, lines).")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--result-name", default="real_model")
    return p.parse_args(argv)


def resolve_model(args: argparse.Namespace, home: Path) -> tuple[Path, dict]:
    """The model directory to train, importing `--gguf` first unless `home` already holds an import of that name."""
    if args.model:
        path = models_dir(home) / args.model if (models_dir(home) / args.model).is_dir() else Path(args.model)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: no imported model in {models_dir(home)}. Import it: --gguf PATH")
        return path, {"imported": False, "path": str(path)}
    target = models_dir(home) / args.name
    if (target / "config.json").is_file():
        say(f"reusing {target}")
        return target, {"imported": False, "path": str(target), "source": str(args.gguf)}
    wall, cpu = time.perf_counter(), time.process_time()
    imported = import_model(args.gguf, home, args.name)
    took = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    say(f"imported {imported.parameters / 1e6:.1f}M parameters to {imported.path} in {took['wall_s']} s")
    return imported.path, {"imported": True, "path": str(imported.path), "source": str(args.gguf)} | took


def parameters(model: Path) -> int:
    """Parameters stored in the model's safetensors (tied weights once), read from the headers, no weights loaded."""
    from safetensors import safe_open

    total = 0
    for path in model.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    return total


def settings_for(args: argparse.Namespace, run: Path, model: Path) -> Settings:
    steps = args.steps
    cfg = load_settings(
        None,
        **{
            "ingest.tokenizer": str(model),
            "ingest.context_length": args.context,
            "ingest.clusters_per_drop": args.clusters,
            "train.model": str(model),
            "train.batch_size": args.batch_size,
            "train.grad_accum": args.grad_accum,
            "train.max_steps": steps,
            "train.epochs": 1000.0,  # the step cap, not the drop size, sets every drop's budget
            "train.warmup_steps": max(1, min(10, steps // 10)),
            "train.checkpoint_every": steps + 1,  # checkpoint I/O is not what is measured
            "train.device": args.device,
            "replay.replay_fraction": args.replay_fraction,
            "replay.arms": args.arms,
            "evaluate.max_sequences_per_drop": args.eval_sequences,
            "evaluate.reference_sequences_per_arm": args.reference_sequences,
        },
    )
    cfg.home = run / "home"
    cfg.memory.uri = str(run / "memory")
    return cfg


def build_stream(root: Path, kinds: list[str], mb: float) -> dict[str, list[str]]:
    """One drop per kind, `d<i>-<kind>`, so that name order is ingest order; returns each drop's documents."""
    drops = {}
    for i, kind in enumerate(kinds, start=1):
        docs, _ = real_documents(int(mb * 1e6), (kind,))
        drops[write_drop(root, f"d{i}-{kind}", docs).name] = docs
    return drops


def _rates(nbytes: int, tokens: int, wall: float, cpu: float) -> dict:
    return {
        "mb": round(nbytes / 1e6, 3),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "mb_per_s": round(nbytes / 1e6 / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def tokenizer_alone(model: Path, drops: dict[str, list[str]]) -> dict:
    tokenizer = load_tokenizer(str(model))
    texts = [t for docs in drops.values() for t in docs]
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return _rates(nbytes, tokens, time.perf_counter() - wall, time.process_time() - cpu)


def ingest(cfg: Settings, root: Path, drops: dict[str, list[str]]) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    results = ingest_source(cfg, str(root), show_progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if exit_code(results) != 0 or len(results) != len(drops):
        raise SystemExit("ingest failed: " + "; ".join(f"{r.drop_id}: {r.status} {r.message}" for r in results))
    nbytes = sum(len(t.encode("utf-8")) for docs in drops.values() for t in docs)
    out = _rates(nbytes, sum(r.record.tokens for r in results), wall, cpu)
    out["per_drop"] = {
        r.drop_id: {"tokens": r.record.tokens, "sequences": r.record.sequences, "holdout": r.record.holdout_sequences}
        for r in results
    }
    return out


def _mark(marks: list, step: int, stats: dict) -> None:
    marks.append((time.perf_counter(), stats["tokens"]))


def run_line(cfg: Settings, strategy: str) -> dict:
    """A fresh line from the imported weights through every drop with `strategy`; runs in its own process."""
    cpu0 = time.process_time()
    memory, line = Memory.open(cfg), Line(cfg.home, f"real-{strategy}")
    drops, evaluation, train_peak = {}, None, None
    for drop in memory.ingested():
        marks: list[tuple[float, int]] = []  # (time after the step, predicted tokens)
        result = train_drop(cfg, memory, line, drop, strategy, on_step=partial(_mark, marks))
        train_peak = train_peak or round(peak_rss_mb(), 1)  # before any evaluation: training's own high-water mark
        tokens = sum(m[1] for m in marks)
        step_s = np.diff([m[0] for m in marks]) if len(marks) > 1 else np.array([result.wall_seconds])
        wall = time.perf_counter()
        evaluation = evaluate_line(cfg, memory, line)
        drops[drop] = {
            "steps": result.steps,
            "replay_sequences": result.replay_sequences,
            "train_wall_s": round(result.wall_seconds, 2),
            "train_tokens": int(tokens),
            "train_tokens_per_s": round(tokens / result.wall_seconds, 1),
            "step_s_median": round(float(np.median(step_s)), 3),
            "final_train_loss": round(result.final_loss, 4),
            "eval_wall_s": round(time.perf_counter() - wall, 2),
            "load_1min": round(os.getloadavg()[0], 2),
        }
        print(f"  {strategy:>5} {drop}: {drops[drop]}", flush=True)
    f = evaluation.forgetting
    return {
        "strategy": strategy,
        "drops": drops,
        "loss_matrix": evaluation.matrix.to_dict(),
        "forgetting_vs_best": f.per_drop,
        "avg_forgetting_vs_best": f.avg,
        "vs_base": f.vs_base,
        "final_new_loss": f.plasticity,
        "train_peak_rss_mb": train_peak,
        "cpu_s": round(time.process_time() - cpu0, 1),
    }


def timed_line(cfg: Settings, strategy: str) -> dict:
    wall = time.perf_counter()
    return run_isolated(run_line, cfg, strategy) | {"wall_s": round(time.perf_counter() - wall, 1)}


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"


def _matrix_md(m: dict) -> str:
    return markdown_table(
        ["after \\ on"] + m["drops"],
        [[r] + [_fmt(v) for v in vals] for r, vals in zip(m["rows"], m["values"], strict=True)],
    )


def report(payload: dict) -> str:
    cfg, lines = payload["config"], payload["strategies"]
    rate_rows = [
        [
            name,
            p["mb"],
            f"{p['tokens']:,}",
            p["wall_s"],
            p["cpu_s"],
            p["mb_per_s"],
            f"{p['tokens_per_s']:,.0f}",
            p["load_1min"],
        ]
        for name, p in (("tokenizer alone", payload["tokenizer_alone"]), ("ingest_source", payload["ingest"]))
    ]
    base = payload["base_loss"]
    train_rows = [
        [
            s,
            d,
            r["steps"],
            f"{r['train_tokens_per_s']:,.1f}",
            r["step_s_median"],
            r["train_wall_s"],
            r["eval_wall_s"],
            r["final_train_loss"],
            r["load_1min"],
        ]
        for s, line in lines.items()
        for d, r in line["drops"].items()
    ]
    summary = [
        [s, _fmt(line["final_new_loss"]), _fmt(line["avg_forgetting_vs_best"])]
        + [
            f"{_fmt(line['forgetting_vs_best'].get(d))} / {100 * line['vs_base'].get(d, float('nan')):+.2f}%"
            for d in base
        ]
        + [line["train_peak_rss_mb"], line["peak_rss_mb"], line["cpu_s"], line["wall_s"]]
        for s, line in lines.items()
    ]
    title = f"{cfg['model_parameters_m']}M-parameter {payload['model']['name']} on {len(base)} drops of real text"
    return "\n\n".join(
        [
            f"# {title}",
            f"Device {payload['device']}; lines run {'at once' if payload['parallel_lines'] else 'one by one'}; "
            f"{cfg['steps']} steps per drop of {cfg['batch_size']} x {cfg['context']} "
            "tokens "
            f"(grad accum {cfg['grad_accum']}), lr {cfg['lr']} (`train.pretrained_lr`), replay fraction "
            f"{cfg['replay_fraction']}, arms {cfg['arms']}; {cfg['eval_sequences']} held-out sequences per drop. "
            f"Load average before {payload['machine']['load_average_1_5_15']}, after {payload['load_average_after']} "
            f"on {payload['machine']['cpu_count']} cores; wall {payload['wall_s']:.0f} s, CPU {payload['cpu_s']:.0f} s "
            "(this process; each line's CPU seconds are its own process's).",
            "## Tokenizing and ingesting the same text\n\n"
            + markdown_table(["", "MB", "tokens", "wall s", "CPU s", "MB/s", "tokens/s", "load"], rate_rows),
            "## Base model loss per drop (the `(base)` row, nats/token)\n\n"
            + markdown_table(list(base), [[_fmt(v) for v in base.values()]]),
            "## Training (per drop)\n\n"
            + markdown_table(
                ["strategy", "drop", "steps", "tokens/s", "step s (median)", "train s", "eval s", "train loss", "load"],
                train_rows,
            ),
            "## none vs amr at equal steps\n\nPer drop: forgetting against best-ever (nats/token) / loss against the "
            "base row.\n\n"
            + markdown_table(
                ["strategy", "final new-drop loss", "avg forgetting vs best"]
                + list(base)
                + ["train peak RSS MB", "peak RSS MB", "CPU s", "wall s"],
                summary,
            ),
        ]
        + [f"## Loss matrix: {s}\n\n{_matrix_md(line['loss_matrix'])}" for s, line in lines.items()]
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads from a hub
    info, cpu0 = machine_info(("torch", "transformers", "tokenizers", "lancedb")), time.process_time()
    home = (args.home or Path(tempfile.mkdtemp(prefix="amr-real-"))).resolve()
    if home.is_relative_to(REPO):
        raise SystemExit(f"--home {home} is inside the repository: give a scratch directory outside it")
    model, model_info = resolve_model(args, home)
    run = home / "runs" / f"real-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    cfg = settings_for(args, run, model)
    drops = build_stream(run / "drops", args.kinds.split(","), args.mb)
    say(f"stream of {len(drops)} drops in {run / 'drops'}; tokenizer alone")
    alone = tokenizer_alone(model, drops)
    say(f"tokenizer alone: {alone}; ingest")
    ingested = ingest(cfg, run / "drops", drops)
    say(f"ingest: {ingested}")
    lines = {}
    strategies = args.strategies.split(",")
    with ThreadPoolExecutor(len(strategies) if args.parallel else 1) as pool:  # each line in its own process
        for strategy, result in zip(strategies, pool.map(partial(timed_line, cfg), strategies), strict=True):
            lines[strategy] = result
            say(f"{strategy}: wall {result['wall_s']} s, CPU {result['cpu_s']} s")
    first = next(iter(lines.values()))["loss_matrix"]
    base = dict(zip(first["drops"], first["values"][first["rows"].index(BASE_ROW)], strict=True))
    payload = {
        "config": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "context": args.context,
            "lr": cfg.train.peak_lr,
            "replay_fraction": args.replay_fraction,
            "arms": args.arms,
            "clusters_per_drop": args.clusters,
            "eval_sequences": args.eval_sequences,
            "reference_sequences": args.reference_sequences,
            "kinds": args.kinds,
            "mb_per_drop": args.mb,
            "model_parameters_m": round(parameters(model) / 1e6, 1),
        },
        "model": {"name": model.name} | model_info,
        "device": resolve_device(args.device),
        "parallel_lines": args.parallel,
        "tokenizer_alone": alone,
        "ingest": ingested,
        "base_loss": base,
        "strategies": lines,
        "wall_s": round(time.perf_counter() - START, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
    }
    write_results(args.out, args.result_name, payload, "(report pending)")  # the numbers, even if the report fails
    markdown = report(payload)
    json_path, md_path = write_results(args.out, args.result_name, payload, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
