"""Plots a person would rather look at than read: arm probabilities over a refresh, forgetting per strategy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import cm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.core.files import atomic_write


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically (a reader such as MLflow or DVC never sees half an image)."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def plot_arm_probabilities(keys: Sequence[str], steps: Sequence[int], probs: Sequence[Sequence[float]], path: Path):
    """Stacked areas: how the sampler shared the replay slots between arms during one refresh."""
    p = np.asarray(probs, dtype=float)
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [cm.tab20(i % 20) for i in range(len(keys))]  # tab10 would repeat colours from the 11th arm on
    ax.stackplot(steps, p.T, labels=list(keys), colors=colors)
    ax.set_xlabel("training step")
    ax.set_ylabel("replay probability")
    ax.set_ylim(0, 1)
    ax.set_title("Replay arm probabilities (amr sampler)")
    ax.legend(fontsize="x-small", ncol=max(1, len(keys) // 8), loc="upper left", bbox_to_anchor=(1.01, 1))
    save_png(fig, path)


def plot_forgetting(results: dict[str, dict], path: Path) -> None:
    """Grouped bars: final forgetting of each past drop, one colour per strategy."""
    strategies = list(results)
    drops = next(iter(results.values()))["drops"][:-1]
    fig = Figure(figsize=(max(6, 1.6 * len(drops) + 2), 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(strategies))
    x = np.arange(len(drops))
    for i, name in enumerate(strategies):
        values = [results[name]["forgetting_per_drop"].get(d, np.nan) for d in drops]
        label = f"{name} (avg {results[name]['avg_forgetting']:.3f})"
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, drops, rotation=20, ha="right")
    ax.set_ylabel("forgetting (nats/token, L_now - L_best)")
    ax.set_title("Forgetting per past drop after the last refresh, equal compute")
    ax.legend(fontsize="small")
    save_png(fig, path)
