"""The refresh stage's DVC outputs: metrics and plots of one model line (`amr metrics`).

Written into the output directory (default `metrics/`), each deterministic for the same line state:
  refresh.json           DVC metrics of the last refresh: forgetting (avg, max, relative, per drop), plasticity,
                         held-out loss per drop, memory version, the gate decision and, for a line that continues
                         a pretrained model, the base model's loss and `vs_base` (relative change against it)
  history.csv            one row per refresh of those figures (a DVC data-series plot: `dvc plots diff` compares
                         them across commits and experiments)
  forgetting.png         forgetting of every drop after every refresh (an image plot: one line per drop)
  arm_probabilities.png  how the sampler shared the replay slots between arms during the last refresh

Losses come from the line's loss matrix; the gate decision and the arm probabilities from the MLflow run of the
line's last drop. A line trained with `amr train` has no such run: its gate decision reads "none".
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.adapters import registry
from components.adapters.lines import Line
from components.core.config import Settings
from components.core.files import atomic_write
from components.core.metrics import BASE_ROW, Forgetting, LossMatrix, forgetting
from components.core.plots import plot_arm_probabilities, save_png

HISTORY_FIELDS = ("refresh", "drop", "forgetting_avg", "forgetting_max", "rel_forgetting_avg", "plasticity")


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def forgetting_history(m: LossMatrix) -> list[tuple[str, Forgetting]]:
    """Forgetting after every refresh t, over the drops measured up to t (later drops are not "past" yet).

    The `(base)` row of a pretrained line is no refresh; it stays in every sub-matrix, so `vs_base` compares each
    refresh with the base model on the drops seen by then."""
    out = []
    base = [BASE_ROW] if BASE_ROW in m.rows else []
    for t in range(len(base), len(m.rows)):
        trained = m.values[len(base) : t + 1]
        seen = [j for j in range(len(m.drops)) if np.isfinite(trained[:, j]).any()]
        sub = LossMatrix([m.drops[j] for j in seen], m.rows[: t + 1], m.values[: t + 1][:, seen])
        out.append((m.rows[t], forgetting(sub)))
    return out


def history_csv(history: list[tuple[str, Forgetting]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_FIELDS)
    for t, (drop, f) in enumerate(history, start=1):
        row = (f.avg, f.max, f.rel_avg, f.plasticity)
        writer.writerow([t, drop, *("" if _finite(v) is None else repr(float(v)) for v in row)])
    return buf.getvalue()


def plot_forgetting_history(history: list[tuple[str, Forgetting]], path: Path) -> None:
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drops = list(dict.fromkeys(d for _, f in history for d in f.per_drop))
    for drop in drops:
        points = [(t, f.per_drop[drop]) for t, (_, f) in enumerate(history, start=1) if drop in f.per_drop]
        ax.plot(*zip(*points, strict=True), marker="o", label=drop)
    ax.set_xticks(range(1, len(history) + 1), [f"{t}: {d}" for t, (d, _) in enumerate(history, start=1)])
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_xlabel("refresh (drop trained)")
    ax.set_ylabel("forgetting (nats/token, L_now - L_best)")
    ax.set_title("Forgetting of every past drop after each refresh")
    if drops:
        ax.legend(fontsize="small")
    save_png(fig, path)


def _placeholder(path: Path, text: str) -> None:
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    save_png(fig, path)


def write_stage_outputs(settings: Settings, line_name: str, out_dir: Path) -> dict[str, Any]:
    """Write the four files for `line_name` into `out_dir`; returns the metrics."""
    line = Line(settings.home, line_name)
    if not line.trained or not line.state.loss_matrix:
        raise ValueError(f"line {line_name} has no evaluated model yet: run the refresh first")
    out_dir.mkdir(parents=True, exist_ok=True)
    history = forgetting_history(line.matrix)
    drop, f = history[-1]
    run = registry.latest_run(settings, line_name, drop)
    metrics = {
        "line": line_name,
        "refreshes": len(history),
        "drop": drop,
        "memory_version": line.state.versions.get(drop),
        "forgetting_avg": _finite(f.avg),
        "forgetting_max": _finite(f.max),
        "rel_forgetting_avg": _finite(f.rel_avg),
        "plasticity": _finite(f.plasticity),
        "forgetting": {d: _finite(v) for d, v in f.per_drop.items()},
        "loss": {d: _finite(line.matrix.loss(drop, d)) for d in line.matrix.drops},
        "base_loss": {d: _finite(v) for d, v in line.matrix.base.items()},  # {} for a line of a built-in model
        "vs_base": {d: _finite(v) for d, v in f.vs_base.items()},
        "gate": {
            "decision": run.get("gate", "none"),
            "promoted": run.get("gate") in ("promoted", "manual"),
            "model_version": run.get("model_version"),
            "champion": run.get("champion"),
        },
    }
    atomic_write(out_dir / "refresh.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write(out_dir / "history.csv", history_csv(history))
    plot_forgetting_history(history, out_dir / "forgetting.png")
    result = run.get("result", {})
    if result.get("arm_probabilities"):
        keys, steps = result["arm_keys"], result["arm_probability_steps"]
        plot_arm_probabilities(keys, steps, result["arm_probabilities"], out_dir / "arm_probabilities.png")
    else:
        why = "strategy without arms, the first drop, or no MLflow run" if run else "no MLflow run for this drop"
        _placeholder(out_dir / "arm_probabilities.png", f"no replay arm probabilities for {drop} ({why})")
    return metrics
