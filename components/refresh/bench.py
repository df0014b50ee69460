"""`amr bench forgetting`: every replay strategy through the same stream of drops at equal compute, over seeds.

The stream's drops are ingested in name order into a fresh memory. For each seed the first drop (no past, so
every strategy trains it identically) is trained and evaluated once on a shared line, copied to one line per
strategy, and each strategy goes on from there drop after drop, evaluated after every drop. Every strategy
runs the same steps x batch size per drop (see components.training.loop), so the comparison is at equal compute.

A strategy may be a variant: `amr+uniform_floor=0.5+reference=last` is amr with those `replay.*` keys changed.
The report keeps every seed's run, the mean and sample sd per strategy, and seed-paired differences
(`paired`), the honest way to compare two strategies whose seeds share the first drop and the data order.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import ReplayConfig, Settings
from components.core.files import atomic_write, write_json_atomic
from components.core.plots import plot_forgetting
from components.evaluation import evaluate_line
from components.ingest import exit_code, ingest_source
from components.training.loop import train_drop

STRATEGIES = ("none", "uniform", "balanced", "amr", "odm")
METRICS = ("avg_forgetting", "max_forgetting", "rel_avg_forgetting", "final_new_loss", "wall_seconds", "cpu_seconds")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def variant(settings: Settings, name: str) -> tuple[Settings, str]:
    """Settings and base strategy of `name`: `amr`, or `amr+key=value+...` with `replay.*` keys overridden."""
    base, *pairs = name.split("+")
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {base!r} in {name!r}; choose from {', '.join(STRATEGIES)}")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ReplayConfig.model_fields or key == "strategy":
            raise ValueError(f"strategy variant {name!r}: {pair!r} is not key=value of a replay.* key (e.g. alpha=0.1)")
        overrides[key] = value
    try:
        replay = ReplayConfig.model_validate(settings.replay.model_dump() | overrides | {"strategy": base})
    except ValueError as e:
        raise ValueError(f"strategy variant {name!r}: {str(e).splitlines()[0]}; fix the value") from None
    return settings.model_copy(update={"replay": replay}), base


def _slug(name: str) -> str:
    return name.replace("+", "-").replace("=", "")


def _refresh(settings: Settings, memory: Memory, line: Line, drop: str, strategy: str) -> tuple[dict, object]:
    cpu = time.process_time()
    result = train_drop(settings, memory, line, drop, strategy)
    cpu = time.process_time() - cpu  # every thread of this process: prefetch and LanceDB too
    start = time.perf_counter()
    evaluation = evaluate_line(settings, memory, line)
    probs = np.asarray(result.arm_probabilities)
    mean_p = {}
    if probs.size:
        for i, key in enumerate(result.arm_keys):
            d = key.split("/")[0]
            mean_p[d] = round(mean_p.get(d, 0.0) + float(probs[:, i].mean()), 4)
    record = {
        "drop": drop,
        "steps": result.steps,
        "wall_seconds": result.wall_seconds,
        "cpu_seconds": cpu,
        "eval_seconds": time.perf_counter() - start,
        "sequences": result.sequences,
        "replay_sequences": result.replay_sequences,
        "replay_by_drop": dict(result.replay_by_drop),
        "mean_probability_by_drop": mean_p,
        "avg_forgetting": evaluation.forgetting.avg,
    }
    return record, evaluation


def run_seed(settings: Settings, memory: Memory, strategies: list[str], seed: int, log=print) -> dict[str, dict]:
    """Every strategy through the stream with `train.seed` = `replay.seed` = `seed`; the first drop trained once."""
    drops = memory.ingested()
    if len(drops) < 2:
        raise ValueError(f"the stream has {len(drops)} drop(s); forgetting needs at least two")
    seeded = settings.model_copy(
        update={
            "train": settings.train.model_copy(update={"seed": seed}),
            "replay": settings.replay.model_copy(update={"seed": seed}),
        }
    )
    shutil.rmtree(seeded.home / "lines" / f"bench-s{seed}-first", ignore_errors=True)
    first = Line(seeded.home, f"bench-s{seed}-first")
    shared, _ = _refresh(seeded, memory, first, drops[0], "none")
    out = {}
    for name in strategies:
        cfg, base = variant(seeded, name)
        root = seeded.home / "lines" / f"bench-s{seed}-{_slug(name)}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(first.root, root)
        line = Line(seeded.home, root.name)
        refreshes, evaluation = [], None
        for drop in drops[1:]:
            record, evaluation = _refresh(cfg, memory, line, drop, base)
            refreshes.append(record)
            log(
                f"  seed {seed} {name:>10} {drop}: avg forgetting {record['avg_forgetting']:.4f}, "
                f"{record['cpu_seconds']:.0f} CPU s"
            )
        f = evaluation.forgetting
        out[name] = {
            "avg_forgetting": f.avg,
            "max_forgetting": f.max,
            "rel_avg_forgetting": f.rel_avg,
            "final_new_loss": f.plasticity,
            "forgetting_per_drop": f.per_drop,
            "loss_matrix": evaluation.matrix.to_dict(),
            "drops": list(drops),
            "wall_seconds": sum(r["wall_seconds"] for r in refreshes),  # drops 2..n: drop 1 is shared
            "cpu_seconds": sum(r["cpu_seconds"] for r in refreshes),
            "sequences": sum(r["sequences"] for r in refreshes),
            "replay_sequences": sum(r["replay_sequences"] for r in refreshes),
            "refreshes": refreshes,
            "shared_first_drop": shared,
        }
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not x.size:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def summarize(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per strategy over `runs` (one dict per stream/seed): the mean of each metric (same keys as one run, so the
    plot and tables take it), `sd` (sample sd, 0 with one run), `n`, and the mean forgetting per past drop."""
    out = {}
    for name in runs[0]:
        rs = [r[name] for r in runs]
        stats = {m: _mean_sd([r[m] for r in rs]) for m in METRICS}
        per_drop: dict[str, list[float]] = {}
        for r in rs:
            for d, v in r["forgetting_per_drop"].items():
                per_drop.setdefault(d, []).append(v)
        out[name] = {m: s[0] for m, s in stats.items()} | {
            "sd": {m: s[1] for m, s in stats.items()},
            "n": len(rs),
            "forgetting_per_drop": {d: float(np.mean(v)) for d, v in per_drop.items()},
            "drops": rs[0]["drops"],
        }
    return out


def paired(runs: list[dict[str, dict]], a: str, b: str, metric: str = "avg_forgetting") -> dict[str, float]:
    """Seed-paired difference a - b of `metric` over `runs`: mean, sample sd, n, and the mean ratio a / b."""
    diffs = [r[a][metric] - r[b][metric] for r in runs]
    ratios = [r[a][metric] / r[b][metric] for r in runs if r[b][metric]]
    mean, sd = _mean_sd(diffs)
    return {"mean": mean, "sd": sd, "n": len(diffs), "ratio_mean": _mean_sd(ratios)[0], "diffs": diffs}


def prepare_stream(settings: Settings, stream_dir: Path, log=print) -> tuple[Settings, Memory]:
    """Ingest `stream_dir` into a fresh memory under `settings.home/bench/<name>`; the settings that point at it."""
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
    return bench, memory


def markdown(report: dict) -> str:
    cols = ("avg_forgetting", "max_forgetting", "final_new_loss", "cpu_seconds", "wall_seconds")
    lines = ["| strategy | " + " | ".join(f"{c} (mean ± sd)" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in report["strategies"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f} ± {r['sd'][c]:.4f}" for c in cols) + " |")
    for name, d in report.get("paired", {}).items():
        lines.append(f"\n{name}: mean {d['mean']:+.4f}, sd {d['sd']:.4f} over {d['n']} seeds")
    return "\n".join(lines) + "\n"


def bench_forgetting(
    settings: Settings, stream_dir: Path, strategies: list[str], out: Path, log=print, seeds: list[int] | None = None
) -> dict:
    """Ingest `stream_dir`, run every strategy for every seed, write JSON + markdown + PNG beside `out`."""
    for name in strategies:
        variant(settings, name)  # fail on a bad name before any training
    bench, memory = prepare_stream(settings, stream_dir, log)
    seeds = list(seeds) if seeds else [settings.train.seed]
    runs = [run_seed(bench, memory, strategies, seed, log) for seed in seeds]
    report = {
        "config": {
            "stream": str(stream_dir),
            "drops": memory.ingested(),
            "seeds": seeds,
            "train": bench.train.model_dump(),
            "replay": bench.replay.model_dump(),
            "ingest": bench.ingest.model_dump(),
        },
        "strategies": summarize(runs),
        "runs": runs,
    }
    if "uniform" in strategies:
        report["paired"] = {
            f"{a} - uniform {m}": paired(runs, a, "uniform", m)
            for a in strategies
            if a != "uniform"
            for m in ("avg_forgetting", "max_forgetting")
        }
    out = Path(out)
    write_json_atomic(out, json.loads(json.dumps(report, default=_finite)))
    atomic_write(out.with_suffix(".md"), markdown(report))
    plot_forgetting(report["strategies"], out.with_suffix(".png"))
    return report
