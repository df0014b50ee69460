"""Arms of past data and the sampler interface every replay strategy shares.

The training loop owns the model and the data; a sampler only sees ids and arrays. Each replay slot is
filled in two draws: an arm from `probabilities()`, then a row uniformly inside that arm. The loop
fetches the rows from LanceDB by id, runs its forward pass, and hands back the per-sample losses, so the
bandit signal costs no extra compute.

All strategies keep the same per-arm statistics (Q, pull counts, last pull step) even when they ignore
them for sampling: a uniform run then logs the same forgetting estimates as an adaptive one, and every
state_dict has one shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.core.config import ReplayConfig

INDEX_COLUMNS = ("_rowid", "drop_id", "split", "cluster")


@dataclass(frozen=True)
class RowRange:
    """The row ids start, start + 1, ..., stop - 1: an arm of contiguous rows held as two numbers, so planning
    with arms from the drops' row-id indexes costs O(arms), not O(rows) (an array of 1e7 ids took 0.3-1 s)."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=np.uint64 if dtype is None else dtype)

    def tolist(self) -> list[int]:
        return list(range(self.start, self.stop))


@dataclass
class Arms:
    """The replayable past, grouped: one arm per (drop, cluster), or per drop."""

    keys: list[str]  # "drop_id/cluster" (arms=cluster) or "drop_id" (arms=drop)
    drop_ids: list[str]  # drop of each arm
    row_ids: list[np.ndarray | RowRange]  # uint64 row ids of each arm's past train sequences, sorted, non-empty

    def __post_init__(self) -> None:
        if not (len(self.keys) == len(self.drop_ids) == len(self.row_ids)):
            raise ValueError("Arms: keys, drop_ids and row_ids must have one entry per arm")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("Arms: arm keys must be unique")
        self.row_ids = [r if isinstance(r, RowRange) else np.asarray(r, dtype=np.uint64) for r in self.row_ids]
        empty = [k for k, r in zip(self.keys, self.row_ids, strict=True) if r.size == 0]
        if empty:
            raise ValueError(f"Arms: arms without rows cannot be sampled: {empty[:5]}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([r.size for r in self.row_ids], dtype=np.int64)


def build_arms(index: pa.Table, past_drops: Sequence[str], mode: Literal["cluster", "drop"]) -> Arms:
    """Group the train rows of `past_drops` into arms, ordered by `past_drops` then cluster id.

    `index` holds one row per stored sequence (`_rowid`, `drop_id`, `split`, `cluster`). Held-out rows are
    never replayed: they measure forgetting. A past drop without train rows simply yields no arm. Row ids are
    sorted inside each arm so that the arms, and hence the samples, do not depend on the scan order.
    """
    if mode not in ("cluster", "drop"):
        raise ValueError(f"arms mode must be 'cluster' or 'drop', got {mode!r}")
    drops = list(past_drops)
    if len(set(drops)) != len(drops):
        raise ValueError(f"past_drops has duplicates: {drops}")
    missing = [c for c in INDEX_COLUMNS if c not in index.column_names]
    if missing:
        raise ValueError(f"index lacks columns {missing}; it needs {list(INDEX_COLUMNS)}")
    if not drops or index.num_rows == 0:
        return Arms([], [], [])

    train = index.filter(pc.equal(index["split"].cast(pa.string()), "train"))
    pos = pc.index_in(train["drop_id"].cast(pa.string()), value_set=pa.array(drops, pa.string()))
    keep = pc.is_valid(pos)
    train, pos = train.filter(keep), pos.filter(keep)
    if train.num_rows == 0:
        return Arms([], [], [])
    if mode == "cluster" and train["cluster"].null_count:
        raise ValueError("index has train rows without a cluster; re-ingest or use arms='drop'")

    drop_pos = pos.to_numpy().astype(np.int64)
    rows = train["_rowid"].to_numpy().astype(np.uint64)
    cluster = train["cluster"].to_numpy().astype(np.int64) if mode == "cluster" else np.zeros_like(drop_pos)
    order = np.lexsort((rows, cluster, drop_pos))
    drop_pos, rows, cluster = drop_pos[order], rows[order], cluster[order]
    starts = np.flatnonzero(np.r_[True, (drop_pos[1:] != drop_pos[:-1]) | (cluster[1:] != cluster[:-1])])

    arm_drops = [drops[i] for i in drop_pos[starts]]
    if mode == "cluster":
        keys = [f"{d}/{c}" for d, c in zip(arm_drops, cluster[starts].tolist(), strict=True)]
    else:
        keys = list(arm_drops)
    return Arms(keys, arm_drops, np.split(rows, starts[1:]))


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)


class ReplaySampler(ABC):
    """Chooses replay rows from arms and tracks each arm's forgetting estimate Q.

    Subclasses define `probabilities()`; sampling, the reward bookkeeping and the state are shared.
    With no arms (the first drop) every strategy returns empty draws and the loop uses new data.
    """

    name: ClassVar[str]

    def __init__(self, cfg: ReplayConfig, arms: Arms, seed: int | None = None) -> None:
        self.cfg = cfg
        self.arms = arms
        self.seed = cfg.seed if seed is None else seed
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        k = len(arms)
        self.sizes = arms.sizes
        ranges = all(isinstance(r, RowRange) for r in arms.row_ids)  # then a row is its arm's start + offset
        self._lo = np.array([r.start for r in arms.row_ids], np.uint64) if ranges else None
        flat = [np.asarray(r, np.uint64) for r in arms.row_ids] if k and not ranges else []
        self._flat = np.concatenate(flat) if flat else np.empty(0, dtype=np.uint64)
        self._starts = np.r_[0, np.cumsum(self.sizes)[:-1]].astype(np.int64) if k else np.empty(0, np.int64)
        self.q = np.zeros(k)
        self.pulls = np.zeros(k, dtype=np.int64)  # replayed samples per arm, over the sampler's life
        self.last_pull = np.zeros(k, dtype=np.int64)  # value of `step` at the arm's latest pull
        self.step = 0  # number of updates so far
        self.reference = np.zeros(k)
        self._reference_source: dict[str, float] = {}

    @property
    def num_arms(self) -> int:
        return len(self.arms)

    @property
    def replays(self) -> bool:
        """Whether any replay slot is filled: some past data exists and the strategy replays it."""
        return self.num_arms > 0

    @abstractmethod
    def probabilities(self) -> np.ndarray:
        """Probability of drawing each arm for one replay slot, shape [K]."""

    def set_reference(self, ref_loss: Mapping[str, float]) -> None:
        """Set each arm's reference loss: its loss on a fixed probe of its own train rows at the last evaluation.

        (Not its held-out loss: the train/held-out gap differs between arms; see components.evaluation.evaluate.)

        An arm without a finite reference of its own borrows the mean reference of its drop's arms that have
        one, then the drop-level loss `ref_loss[drop_id]` (what a per-drop evaluator reports), then 0 (the
        reward is the raw loss: still comparable across arms, just not centred). Unknown keys are ignored.
        """
        src = {k: float(v) for k, v in ref_loss.items() if np.isfinite(v)}
        own = np.array([src.get(k, np.nan) for k in self.arms.keys], dtype=np.float64)
        drops, drop_of = np.unique(np.array(self.arms.drop_ids, dtype=object), return_inverse=True)
        has = ~np.isnan(own)
        n_ref = np.bincount(drop_of, weights=has, minlength=len(drops))
        sum_ref = np.bincount(drop_of, weights=np.where(has, own, 0.0), minlength=len(drops))
        fallback = np.array([src.get(d, 0.0) for d in drops], dtype=np.float64)
        drop_ref = np.divide(sum_ref, n_ref, out=fallback, where=n_ref > 0)
        self.reference = np.where(has, own, drop_ref[drop_of]) if len(own) else own
        self._reference_source = src

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw `n` replay rows: (row ids uint64 [n], arm index int64 [n])."""
        if n < 0:
            raise ValueError(f"cannot sample a negative number of rows ({n})")
        if n == 0 or self.num_arms == 0:
            return _empty()
        arm = self.rng.choice(self.num_arms, size=n, p=self.probabilities()).astype(np.int64)
        offset = self.rng.integers(0, self.sizes[arm])
        if self._lo is not None:
            return self._lo[arm] + offset.astype(np.uint64), arm
        return self._flat[self._starts[arm] + offset], arm

    def arm_stats(self, arm_idx: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-arm (sum of loss - reference, sample count), shape [K] each; non-finite losses are skipped.

        Sums and counts add across ranks, so DDP all-reduces them before `update_from_stats`. A NaN loss
        (an overflowed step) would poison Q for good; the loop sees it anyway and decides what to do.
        """
        arm_idx = np.asarray(arm_idx, dtype=np.int64).ravel()
        losses = np.asarray(losses, dtype=np.float64).ravel()
        if arm_idx.shape != losses.shape:
            raise ValueError(f"arm_idx {arm_idx.shape} and losses {losses.shape} differ in shape")
        if arm_idx.size and (arm_idx.min() < 0 or arm_idx.max() >= self.num_arms):
            raise ValueError(f"arm index out of range [0, {self.num_arms})")
        ok = np.isfinite(losses)
        arm_idx, losses = arm_idx[ok], losses[ok]
        sums = np.bincount(arm_idx, weights=losses - self.reference[arm_idx], minlength=self.num_arms)
        counts = np.bincount(arm_idx, minlength=self.num_arms).astype(np.int64)
        return sums.astype(np.float64), counts

    def update_from_stats(self, sums: np.ndarray, counts: np.ndarray) -> None:
        """One bandit step: Q <- (1 - alpha) Q + alpha * mean(loss - ref) for the arms pulled in it."""
        sums = np.asarray(sums, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        if sums.shape != (self.num_arms,) or counts.shape != (self.num_arms,):
            raise ValueError(f"sums and counts must have shape ({self.num_arms},)")
        if (counts < 0).any():
            raise ValueError("counts must be non-negative")
        self.step += 1
        pulled = counts > 0
        reward = sums[pulled] / counts[pulled]
        self.q[pulled] = (1.0 - self.cfg.alpha) * self.q[pulled] + self.cfg.alpha * reward
        self.pulls[pulled] += np.rint(counts[pulled]).astype(np.int64)
        self.last_pull[pulled] = self.step

    def update(self, arm_idx: np.ndarray, losses: np.ndarray) -> None:
        """Feed back the per-sample training losses of the rows replayed in one step (single process)."""
        self.update_from_stats(*self.arm_stats(arm_idx, losses))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; JSON-serializable (the PCG64 state is plain ints)."""
        return {
            "name": self.name,
            "keys": list(self.arms.keys),
            "q": self.q.tolist(),
            "pulls": self.pulls.tolist(),
            "last_pull": self.last_pull.tolist(),
            "step": self.step,
            "reference": dict(self._reference_source),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`, possibly saved with fewer arms (an earlier refresh).

        Arms are matched by key. An arm new to the state (a drop that became past since) starts at the mean Q
        of the matched arms, neither favoured nor starved, with last_pull = step so its exploration bonus grows
        from zero like any arm just pulled. Arms only in the state are dropped. The RNG is restored exactly.
        """
        if state.get("name") != self.name:
            raise ValueError(f"state is for sampler {state.get('name')!r}, not {self.name!r}")
        step = int(state["step"])
        saved = {k: i for i, k in enumerate(state["keys"])}
        q_old = np.asarray(state["q"], dtype=np.float64)
        new_idx = np.array([i for i, k in enumerate(self.arms.keys) if k in saved], dtype=np.int64)
        old_idx = np.array([saved[self.arms.keys[i]] for i in new_idx], dtype=np.int64)
        self.q = np.full(self.num_arms, q_old[old_idx].mean() if old_idx.size else 0.0)
        self.pulls = np.zeros(self.num_arms, dtype=np.int64)
        self.last_pull = np.full(self.num_arms, step, dtype=np.int64)
        self.q[new_idx] = q_old[old_idx]
        self.pulls[new_idx] = np.asarray(state["pulls"], dtype=np.int64)[old_idx]
        self.last_pull[new_idx] = np.asarray(state["last_pull"], dtype=np.int64)[old_idx]
        self.step = step
        self.set_reference(state.get("reference", {}))
        self.rng.bit_generator.state = state["rng"]
