"""Held-out evaluation: the loss of every trained drop, the loss matrix L[t][j], forgetting and plasticity.

Losses are token-weighted means in nats/token over each drop's held-out sequences (every predicted token counts
once, whatever the sequence lengths). The same pass also yields each arm's held-out loss (per cluster and per
drop), which becomes the replay sampler's reference for the next refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.config import Settings
from components.lines import Line
from components.memory import Memory
from components.metrics import Forgetting, LossMatrix, forgetting, write_matrix_artifacts
from components.training.model import load_model
from components.training.trainer import per_sample_loss

FETCH_ROWS = 1024


@dataclass
class Evaluation:
    drop_losses: dict[str, float]
    arm_losses: dict[str, float]  # "drop/cluster" and "drop" -> held-out loss
    matrix: LossMatrix
    forgetting: Forgetting
    artifacts: dict[str, Path]


def heldout_losses(model, memory: Memory, version: int, drops: list[str], settings: Settings):
    """Token-weighted held-out loss per drop and per (drop, cluster) arm."""
    cfg = settings.evaluate
    index = memory.index(version, columns=("drop_id", "split", "cluster", "position", "length"))
    index = index.filter(
        pc.and_(pc.equal(index["split"], "holdout"), pc.is_in(index["drop_id"], value_set=pa.array(drops, pa.string())))
    )
    if cfg.max_sequences_per_drop is not None:
        index = index.filter(pc.less(index["position"], cfg.max_sequences_per_drop))
    ids = index.column("_rowid").to_numpy()
    losses = np.empty(len(ids))
    for start in range(0, len(ids), FETCH_ROWS):
        tokens, lengths = memory.take(ids[start : start + FETCH_ROWS], version)
        losses[start : start + FETCH_ROWS] = per_sample_loss(
            model, tokens, lengths, settings.train.device, cfg.batch_size
        )
    weights = np.maximum(index.column("length").to_numpy().astype(np.float64) - 1, 0)
    drop_col = np.asarray(index.column("drop_id").to_pylist(), dtype=object)
    arm_col = np.char.add(np.char.add(drop_col.astype(str), "/"), index.column("cluster").to_numpy().astype(str))
    ok = np.isfinite(losses) & (weights > 0)

    def weighted(keys: np.ndarray) -> dict[str, float]:
        out = {}
        for key in dict.fromkeys(keys.tolist()):
            sel = ok & (keys == key)
            out[key] = float(np.sum(losses[sel] * weights[sel]) / np.sum(weights[sel])) if sel.any() else float("nan")
        return out

    by_drop = weighted(drop_col.astype(str))
    return {d: by_drop.get(d, float("nan")) for d in drops}, weighted(arm_col) | by_drop


def evaluate_line(settings: Settings, memory: Memory, line: Line, model=None) -> Evaluation:
    """Evaluate the line's current model on every drop it has trained; update its matrix and arm references."""
    if not line.trained:
        raise ValueError(f"line {line.name} has not trained on any drop yet: run `amr train` first")
    model = model if model is not None else load_model(line.model_dir)
    version = memory.version
    drop_losses, arm_losses = heldout_losses(model, memory, version, line.trained, settings)
    matrix = line.matrix
    label = line.trained[-1]
    if label in matrix.rows:  # re-evaluating the same model replaces its row
        keep = [i for i, r in enumerate(matrix.rows) if r != label]
        matrix = LossMatrix(matrix.drops, [matrix.rows[i] for i in keep], matrix.values[keep])
    matrix.add_row(label, drop_losses)
    line.commit_evaluation(matrix, arm_losses)
    artifacts = write_matrix_artifacts(matrix, line.root / "eval")
    return Evaluation(drop_losses, arm_losses, matrix, forgetting(matrix), artifacts)
