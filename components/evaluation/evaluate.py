"""Evaluation: the loss of every trained drop, the loss matrix L[t][j], forgetting, plasticity, arm references.

Losses are token-weighted means in nats/token (every predicted token counts once, whatever the sequence lengths).

* Held-out loss per drop (split `holdout`): the metrics, the loss matrix and the gate.
* Reference loss per replay arm: the loss on a fixed probe of the arm's own *train* sequences (a seeded random
  sample of `reference_sequences_per_arm` per drop and cluster). The architecture page takes the arm's held-out
  loss as reference; we deviate because the sampler's signal is the loss of replayed *train* sequences, and the
  train/held-out gap differs a lot between arms (measured here: 0.40 nats/token for Python code, 0.11 for licence
  text after the same training). Against a held-out reference that gap, not forgetting, decides which arm looks
  worse. Against a train probe, loss - reference is the change since the last evaluation: forgetting. The probe
  costs a few hundred forward passes at evaluation time and none during training.
* Base loss per drop (a line that continues a pretrained model): the row `(base)` of the loss matrix, measured
  once per drop with the unchanged weights of `train.model` (components/core/metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.metrics import Forgetting, LossMatrix, forgetting, write_matrix_artifacts
from components.training.model import build_model, load_model
from components.training.trainer import per_sample_loss

FETCH_ROWS = 1024


@dataclass
class Evaluation:
    drop_losses: dict[str, float]  # held-out loss per drop; inf or NaN when any of its sequences' loss is
    arm_reference: dict[str, float]  # "drop/cluster" and "drop" -> train-probe loss
    matrix: LossMatrix
    forgetting: Forgetting
    artifacts: dict[str, Path]
    nonfinite: dict[str, int] = field(default_factory=dict)  # held-out sequences with a non-finite loss, per drop
    uniform_loss: float = math.inf  # ln(vocabulary size): the loss of guessing every token uniformly

    @property
    def healthy(self) -> bool:
        """Every held-out loss is finite and below the uniform guess; a model that fails this has diverged."""
        return all(math.isfinite(v) and v <= self.uniform_loss for v in self.drop_losses.values())


@dataclass
class Measured:
    losses: dict[str, float]  # held-out loss per drop
    reference: dict[str, float]  # train-probe loss per arm and per drop
    nonfinite: dict[str, int]  # held-out sequences with a non-finite loss, per drop


def _losses(model, memory: Memory, version: int, rows: pa.Table, settings: Settings) -> np.ndarray:
    ids = rows.column("_rowid").to_numpy()
    out = np.empty(len(ids))
    for start in range(0, len(ids), FETCH_ROWS):
        tokens, lengths = memory.take(ids[start : start + FETCH_ROWS], version)
        out[start : start + FETCH_ROWS] = per_sample_loss(
            model, tokens, lengths, settings.train.device, settings.evaluate.batch_size
        )
    return out


def _weighted_means(keys: list[str], losses: np.ndarray, lengths: np.ndarray, strict: bool) -> dict[str, float]:
    """Token-weighted mean loss per key (a sequence of length n predicts n - 1 tokens).

    `strict`: a non-finite sequence loss makes its key's mean non-finite (held-out losses: a model that produces
    inf or NaN on some sequences must not get a finite loss and pass the gate). Otherwise such sequences are
    skipped (the arms' reference losses, where a missing value falls back to the drop's)."""
    weights = np.maximum(lengths.astype(np.float64) - 1, 0)
    keys_arr = np.asarray(keys, dtype=object)
    ok = (weights > 0) if strict else np.isfinite(losses) & (weights > 0)
    out = {}
    for key in dict.fromkeys(keys):
        sel = ok & (keys_arr == key)
        out[key] = float(np.sum(losses[sel] * weights[sel]) / np.sum(weights[sel])) if sel.any() else float("nan")
    return out


def _select(index: pa.Table, drops: list[str], split: str) -> pa.Table:
    mask = pc.and_(pc.equal(index["split"], split), pc.is_in(index["drop_id"], value_set=pa.array(drops, pa.string())))
    return index.filter(mask)


def _probe(index: pa.Table, drops: list[str], per_arm: int, seed: int) -> pa.Table:
    """A fixed random sample of `per_arm` train rows of every (drop, cluster); the same for the same memory.

    Random rather than the first rows: rows are stored in document order, so the first ones would all come
    from a few documents and give a biased reference."""
    train = _select(index, drops, "train")
    drop = np.char.add(np.asarray(train.column("drop_id").to_pylist(), dtype=str), "/")
    arm = np.char.add(drop, train.column("cluster").to_numpy().astype(str))
    key = np.random.default_rng(seed).random(len(arm))
    order = np.lexsort((key, arm))
    sorted_arm = arm[order]
    starts = np.r_[0, np.flatnonzero(sorted_arm[1:] != sorted_arm[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return train.take(pa.array(np.sort(order[rank < per_arm])))


def held_out(model, memory: Memory, version: int, drops: list[str], settings: Settings) -> tuple[dict, dict]:
    """Held-out loss per drop (token-weighted, non-finite if any sequence's is) and how many held-out sequences per
    drop got a non-finite loss."""
    index = memory.index(version, columns=("drop_id", "split", "position", "length"))
    holdout = _select(index, drops, "holdout")
    cap = settings.evaluate.max_sequences_per_drop
    if cap is not None:
        holdout = holdout.filter(pc.less(holdout["position"], cap))
    held_drops, held_losses = holdout.column("drop_id").to_pylist(), _losses(model, memory, version, holdout, settings)
    held = _weighted_means(held_drops, held_losses, holdout.column("length").to_numpy(), strict=True)
    bad = np.asarray(held_drops, dtype=object)[~np.isfinite(held_losses) & (holdout.column("length").to_numpy() > 1)]
    nonfinite = {d: int(np.sum(bad == d)) for d in drops if np.any(bad == d)}
    return {d: held.get(d, float("nan")) for d in drops}, nonfinite


def measure(model, memory: Memory, version: int, drops: list[str], settings: Settings) -> Measured:
    """Held-out loss per drop, the train-probe reference loss per arm ("drop/cluster" and "drop"), and how many
    held-out sequences per drop got a non-finite loss."""
    losses, nonfinite = held_out(model, memory, version, drops, settings)
    index = memory.index(version, columns=("drop_id", "split", "cluster", "length"))
    probe = _probe(index, drops, settings.evaluate.reference_sequences_per_arm, settings.replay.seed)
    probe_losses, probe_lengths = _losses(model, memory, version, probe, settings), probe.column("length").to_numpy()
    drop_ids = probe.column("drop_id").to_pylist()
    arms = [f"{d}/{c}" for d, c in zip(drop_ids, probe.column("cluster").to_pylist(), strict=True)]
    reference = _weighted_means(arms, probe_losses, probe_lengths, strict=False) | _weighted_means(
        drop_ids, probe_losses, probe_lengths, strict=False
    )
    return Measured(losses, reference, nonfinite)


def base_origin(settings: Settings, line: Line) -> str | None:
    """The pretrained model directory the line started from, or None for a line of a built-in model.

    A state file older than the recorded origin falls back to the configured `train.model`."""
    origin = line.state.origin or settings.train.model
    return origin if settings.train.model_copy(update={"model": origin}).pretrained else None


def measure_base(settings: Settings, memory: Memory, line: Line, matrix: LossMatrix) -> LossMatrix:
    """Fill the `(base)` row of a pretrained line for every trained drop it lacks: the unchanged base weights on
    the drop's held-out data, which never changes, so this is its loss before any training on it."""
    origin = base_origin(settings, line)
    lacking = matrix.base_lacks(line.trained) if origin else []
    if not lacking:
        return matrix
    meta = memory.meta()
    cfg = settings.train.model_copy(update={"model": origin})
    try:
        base = build_model(cfg, meta["vocab_size"], meta["context_length"], meta["eos_id"], meta["pad_id"])
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"line {line.name}: its base model {origin} (the `(base)` row of its loss matrix, measured on each new "
            f"drop) does not load: {exc}. Fix: put that model back, or train a new line (--line) from another one"
        ) from None
    losses, _ = held_out(base, memory, memory.version, lacking, settings)
    return matrix.set_base(losses)


def evaluate_line(settings: Settings, memory: Memory, line: Line, model=None) -> Evaluation:
    """Evaluate the line's current model on every drop it has trained; update its matrix and arm references."""
    if not line.trained:
        raise ValueError(f"line {line.name} has not trained on any drop yet: run `amr train` first")
    model = model if model is not None else load_model(line.model_dir)
    measured = measure(model, memory, memory.version, line.trained, settings)
    drop_losses, reference = measured.losses, measured.reference
    matrix = line.matrix
    label = line.trained[-1]
    if label in matrix.rows:  # re-evaluating the same model replaces its row
        keep = [i for i, r in enumerate(matrix.rows) if r != label]
        matrix = LossMatrix(matrix.drops, [matrix.rows[i] for i in keep], matrix.values[keep])
    matrix.add_row(label, drop_losses)
    matrix = measure_base(settings, memory, line, matrix)
    line.commit_evaluation(matrix, reference)
    artifacts = write_matrix_artifacts(matrix, line.root / "eval")
    uniform = math.log(memory.meta()["vocab_size"])
    return Evaluation(drop_losses, reference, matrix, forgetting(matrix), artifacts, measured.nonfinite, uniform)
