"""Forgetting metrics over the loss matrix L[t][j], and its artifacts (JSON, CSV, heatmap PNG).

L[t][j] is the mean held-out loss (nats/token) of drop j after training the t-th drop. The core is pure
numpy; `write_matrix_artifacts` is the only I/O, and writes each file atomically so a reader (MLflow, DVC,
a dashboard) never sees half a file.

Conventions chosen where the design is silent:
  * A row label is the id of the drop trained in that row. Drop j's "training row" is the row labelled j,
    or, if no row is (a matrix that starts mid-history), the first row where j was measured.
  * "Earlier" rows for drop j are its training row up to, but not including, the last row ("now"). The loss
    right after training j is thus its baseline, and forgetting is measured against the best j ever had.
  * A past drop whose current or earlier losses are all NaN gets F_j = NaN, and the aggregates become NaN:
    a missing measurement stays visible instead of silently averaging to less forgetting.
  * A line that continues a pretrained model has a first row `(base)`: the unchanged base weights on each drop,
    measured when the drop is first evaluated (the held-out data never changes, so that is the loss before any
    training on it). It is never a drop's best-ever loss (forgetting counts from the drop's own training row);
    `vs_base` compares the current row with it instead: (L_j(now) - base_j) / base_j, > 0 when the line is worse
    than the model it started from. Built-in models trained from scratch have no base row: their random weights
    score about ln(vocabulary), which the gate's divergence check already requires beating.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.core.files import atomic_write
from components.core.plots import save_png

BASE_ROW = "(base)"  # the row of the pretrained weights a line started from (never a drop id: ids have no parens)


@dataclass
class LossMatrix:
    drops: list[str] = field(default_factory=list)  # columns, in training order
    rows: list[str] = field(default_factory=list)  # row t = "after training drop X"
    values: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # [T, J]; NaN where not measured

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(len(self.rows), len(self.drops))
        if len(set(self.drops)) != len(self.drops) or len(set(self.rows)) != len(self.rows):
            raise ValueError("LossMatrix: drop and row labels must be unique")

    def add_row(self, label: str, losses: Mapping[str, float]) -> LossMatrix:
        """Append the losses measured after training drop `label`; returns self, changed in place.

        Drops not seen before become new columns (NaN in the rows above); drops not in `losses` get NaN.
        """
        if label in self.rows:
            raise ValueError(f"LossMatrix already has a row {label!r}")
        new = [d for d in losses if d not in self.drops]
        values = np.pad(self.values, ((0, 1), (0, len(new))), constant_values=np.nan)
        self.drops = self.drops + new
        values[-1] = [float(losses.get(d, math.nan)) for d in self.drops]
        self.rows = self.rows + [label]
        self.values = values
        return self

    def set_base(self, losses: Mapping[str, float]) -> LossMatrix:
        """Fill the `(base)` row (created as the first row if absent) with `losses`; returns self, changed in place.

        Drops not seen before become new columns (NaN in the other rows); cells already measured are replaced."""
        if BASE_ROW not in self.rows:
            self.rows = [BASE_ROW, *self.rows]
            self.values = np.vstack([np.full((1, len(self.drops)), np.nan), self.values])
        new = [d for d in losses if d not in self.drops]
        self.values = np.pad(self.values, ((0, 0), (0, len(new))), constant_values=np.nan)
        self.drops = self.drops + new
        for drop, value in losses.items():
            self.values[0, self.drops.index(drop)] = float(value)
        return self

    @property
    def base(self) -> dict[str, float]:
        """The base row's measured losses per drop ({} without a base row); a cell never measured is left out."""
        if BASE_ROW not in self.rows:
            return {}
        row = self.values[self.rows.index(BASE_ROW)]
        return {d: float(v) for d, v in zip(self.drops, row, strict=True) if not math.isnan(v)}

    def base_lacks(self, drops: list[str]) -> list[str]:
        """Those of `drops` whose base loss has not been measured yet."""
        return [d for d in drops if d not in self.base]

    def loss(self, row: str, drop: str) -> float:
        return float(self.values[self.rows.index(row), self.drops.index(drop)])

    def to_dict(self) -> dict[str, Any]:
        values = [[v if math.isfinite(v) else None for v in row] for row in self.values.tolist()]
        return {"drops": list(self.drops), "rows": list(self.rows), "values": values}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LossMatrix:
        values = [[math.nan if v is None else float(v) for v in row] for row in d["values"]]
        if len(values) != len(d["rows"]) or any(len(r) != len(d["drops"]) for r in values):
            raise ValueError("LossMatrix.from_dict: values must be rows x drops")
        return cls(list(d["drops"]), list(d["rows"]), np.array(values, dtype=np.float64))


@dataclass
class Forgetting:
    per_drop: dict[str, float]  # F_j = L_j(now) - min over earlier rows of L_j, clamped >= 0
    relative: dict[str, float]  # F_j / that min
    avg: float  # over past drops (all but the one trained in the last row); 0.0 if none
    max: float
    rel_avg: float
    plasticity: float  # L_new(now): loss on the drop trained in the last row; NaN if not measured
    vs_base: dict[str, float] = field(default_factory=dict)  # (L_j(now) - base_j) / base_j; {} without a base row


def _training_row(m: LossMatrix, j: int) -> int:
    drop = m.drops[j]
    if drop in m.rows:
        return m.rows.index(drop)
    trained = np.array([r != BASE_ROW for r in m.rows], dtype=bool)
    measured = np.flatnonzero(np.isfinite(m.values[:, j]) & trained)
    return int(measured[0]) if measured.size else len(m.rows)


def forgetting(m: LossMatrix) -> Forgetting:
    """Forgetting of every past drop at the last row of `m`, and plasticity on the newest drop."""
    if not m.rows or m.rows[-1] == BASE_ROW:
        what = "an empty loss matrix" if not m.rows else "a loss matrix with only its base row"
        raise ValueError(f"forgetting of {what} is undefined: evaluate at least once after training")
    now, current = len(m.rows) - 1, m.rows[-1]
    per_drop: dict[str, float] = {}
    relative: dict[str, float] = {}
    for j, drop in enumerate(m.drops):
        if drop == current:
            continue
        earlier = m.values[_training_row(m, j) : now, j]
        earlier = earlier[np.isfinite(earlier)]
        latest = m.values[now, j]
        if not earlier.size or not math.isfinite(latest):
            per_drop[drop] = relative[drop] = math.nan
            continue
        best = float(earlier.min())
        per_drop[drop] = max(0.0, float(latest) - best)
        relative[drop] = per_drop[drop] / best if best > 0 else math.nan

    def agg(values: list[float], fn: Callable[[np.ndarray], Any]) -> float:
        return float(fn(np.array(values))) if values else 0.0

    plasticity = m.loss(current, current) if current in m.drops else math.nan
    return Forgetting(
        per_drop=per_drop,
        relative=relative,
        avg=agg(list(per_drop.values()), np.mean),
        max=agg(list(per_drop.values()), np.max),
        rel_avg=agg(list(relative.values()), np.mean),
        plasticity=plasticity,
        vs_base=vs_base(m),
    )


def vs_base(m: LossMatrix) -> dict[str, float]:
    """Relative loss change of every drop at the last row against the base row: (L_j(now) - base_j) / base_j.

    Positive: the line now does worse on drop j than the pretrained model it started from (for a past drop, what it
    forgot of what the base knew); negative: better. NaN where either loss is not finite or the base loss is 0."""
    base = m.base
    out = {}
    for j, drop in enumerate(m.drops):
        if drop not in base:
            continue
        now, b = float(m.values[-1, j]), base[drop]
        out[drop] = (now - b) / b if math.isfinite(now) and math.isfinite(b) and b > 0 else math.nan
    return out


def matrix_csv(m: LossMatrix) -> str:
    """CSV with a header `after,<drop>...` and one line per row; an unmeasured cell is empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["after", *m.drops])
    for label, row in zip(m.rows, m.values.tolist(), strict=True):
        writer.writerow([label, *(repr(v) if math.isfinite(v) else "" for v in row)])
    return buf.getvalue()


def _heatmap(m: LossMatrix) -> Figure:
    t, j = m.values.shape
    fig = Figure(figsize=(max(4.0, 1.1 * j + 2.0), max(3.0, 0.6 * t + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)  # pin the Agg canvas: no GUI backend, no pyplot global state
    ax = fig.add_subplot()
    if not m.values.size:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no measurements yet", ha="center", va="center")
        return fig
    image = ax.imshow(np.ma.masked_invalid(m.values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="held-out loss (nats/token)")
    ax.set_xticks(range(j), m.drops, rotation=45, ha="right")
    ax.set_yticks(range(t), m.rows)
    ax.set_xlabel("evaluated drop")
    ax.set_ylabel("after training drop")
    finite = m.values[np.isfinite(m.values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(m.values):
        if math.isfinite(v):
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8, color="black" if v > middle else "white")
    return fig


def write_matrix_artifacts(m: LossMatrix, out_dir: Path) -> dict[str, Path]:
    """Write loss_matrix.json, loss_matrix.csv and loss_matrix.png into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"loss_matrix.{name}" for name in ("json", "csv", "png")}
    payload = json.dumps(m.to_dict(), indent=2).encode()
    atomic_write(paths["json"], payload)
    atomic_write(paths["csv"], matrix_csv(m))
    save_png(_heatmap(m), paths["png"], dpi=120)
    return paths
