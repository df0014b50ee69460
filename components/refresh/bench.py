"""`amr bench forgetting`: every replay strategy through the same stream of drops at equal compute.

The stream's drops are ingested in name order into a fresh memory; then, for each strategy, the same initial
model (same seed) is trained drop after drop on its own line, evaluated after every drop, and its final
forgetting figures are compared. Every strategy runs the same steps x batch size per drop (see
components.training.loop), so the comparison is at equal compute.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.files import atomic_write, write_json_atomic
from components.core.plots import plot_forgetting
from components.evaluation import evaluate_line
from components.ingest import exit_code, ingest_source
from components.training.loop import train_drop

STRATEGIES = ("none", "uniform", "balanced", "amr")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run_strategy(settings: Settings, memory: Memory, strategy: str, log=print) -> dict:
    line_root = settings.home / "lines" / f"bench-{strategy}"
    shutil.rmtree(line_root, ignore_errors=True)  # every strategy starts from the same fresh model
    line = Line(settings.home, f"bench-{strategy}")
    train_s = eval_s = 0.0
    sequences = replay = 0
    evaluation = None
    for drop in memory.ingested():
        result = train_drop(settings, memory, line, drop, strategy)
        start = time.perf_counter()
        evaluation = evaluate_line(settings, memory, line)
        eval_s += time.perf_counter() - start
        train_s += result.wall_seconds
        sequences += result.sequences
        replay += result.replay_sequences
        log(
            f"  {strategy:>8} {drop}: {result.steps} steps, loss {result.final_loss:.3f}, "
            f"avg forgetting {evaluation.forgetting.avg:.4f}, {result.wall_seconds:.1f}s"
        )
    f = evaluation.forgetting
    return {
        "avg_forgetting": f.avg,
        "max_forgetting": f.max,
        "rel_avg_forgetting": f.rel_avg,
        "final_new_loss": f.plasticity,
        "forgetting_per_drop": f.per_drop,
        "loss_matrix": evaluation.matrix.to_dict(),
        "drops": list(line.trained),
        "sequences": sequences,
        "replay_sequences": replay,
        "wall_seconds": train_s,
        "eval_seconds": eval_s,
    }


def markdown(report: dict) -> str:
    cols = [
        "avg_forgetting",
        "max_forgetting",
        "rel_avg_forgetting",
        "final_new_loss",
        "sequences",
        "replay_sequences",
        "wall_seconds",
    ]
    lines = ["| strategy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in report["strategies"].items():
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = report.get("ratios", {})
    if ratios:
        lines += ["", "Ratios against `none` in the same run:", ""]
        lines += [f"- {k}: {v:.3f}" if v is not None else f"- {k}: n/a" for k, v in ratios.items()]
    return "\n".join(lines) + "\n"


def ratios(strategies: dict[str, dict]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    base = strategies.get("none")
    if not base:
        return out
    for name, r in strategies.items():
        if name == "none":
            continue
        for key in ("avg_forgetting", "final_new_loss", "wall_seconds"):
            denom = base[key]
            out[f"{name}/none {key}"] = _finite(r[key] / denom) if denom else None
    return out


def bench_forgetting(settings: Settings, stream_dir: Path, strategies: list[str], out: Path, log=print) -> dict:
    """Ingest `stream_dir` into a fresh memory, run every strategy, write JSON + markdown + PNG beside `out`."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    work = settings.home / "bench" / Path(stream_dir).name
    shutil.rmtree(work, ignore_errors=True)
    bench = settings.model_copy(update={"home": work, "memory": settings.memory.model_copy(update={"uri": ""})})
    results = ingest_source(bench, str(stream_dir), show_progress=False)
    if exit_code(results) != 0 or not results:
        raise ValueError(
            "the stream did not ingest cleanly: " + "; ".join(f"{r.drop_id}: {r.message}" for r in results)
        )
    memory = Memory.open(bench)
    log(f"stream {stream_dir}: {len(memory.ingested())} drops ingested into a fresh memory at {bench.memory_uri}")
    report = {
        "config": {
            "stream": str(stream_dir),
            "drops": memory.ingested(),
            "train": bench.train.model_dump(),
            "replay": bench.replay.model_dump(),
            "ingest": bench.ingest.model_dump(),
        },
        "strategies": {},
    }
    for strategy in strategies:
        report["strategies"][strategy] = run_strategy(bench, memory, strategy, log)
    report["ratios"] = ratios(report["strategies"])
    out = Path(out)
    write_json_atomic(out, json.loads(json.dumps(report, default=_finite)))
    atomic_write(out.with_suffix(".md"), markdown(report))
    plot_forgetting(report["strategies"], out.with_suffix(".png"))
    return report
