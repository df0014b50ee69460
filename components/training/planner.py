"""What each training step reads: this rank's share of the new drop's rows plus replay rows chosen by the sampler.

Budget ("zero-cost"): plain fine-tuning runs T = ceil(epochs * N_new / B) steps of B sequences (or `max_steps`).
Every strategy runs exactly those T x B sequences: `round(replay_fraction * B)` replay slots per batch once past
data exists, the rest new data. No strategy spends forward passes outside training: the bandit's signal is the
replayed rows' own loss from the training forward pass.

The arms and the new drop's rows come from the drops' row-id indexes in their records (`planning_rows`;
components.adapters.records.DropIndex), so planning costs O(number of arms) reads whatever the memory's size, for
`replay.arms` drop and cluster alike; a memory with a drop ingested before those indexes (or, for cluster arms,
before its train rows were grouped by cluster) falls back to one scan of every row's (drop, split, cluster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.adapters.records import DropIndex
from components.core.config import Settings
from components.core.replay import Arms, NoReplay, ReplaySampler, RowRange, build_arms, build_sampler
from components.training.ranks import Dist, Slots, local_slots, rank_rng


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    n_new: int
    n_replay: int

    @property
    def sequences(self) -> int:
        return self.steps * self.batch_size


def plan_budget(n_new_rows: int, settings: Settings, replaying: bool) -> Budget:
    """The plain fine-tuning budget, split into new and replay slots (same total for every strategy)."""
    cfg = settings.train
    steps = max(1, math.ceil(cfg.epochs * n_new_rows / cfg.batch_size))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    n_replay = round(settings.replay.replay_fraction * cfg.batch_size) if replaying else 0
    n_new = cfg.batch_size - n_replay
    if n_new < 1:
        raise ValueError(f"batch_size {cfg.batch_size} leaves no new-data slot after {n_replay} replay slots")
    return Budget(steps, cfg.batch_size, n_new, n_replay)


class NewDataCursor:
    """Walks the new drop's train rows in a seeded shuffled order, reshuffling each epoch; resumable."""

    def __init__(self, row_ids: np.ndarray, seed: int):
        self.row_ids = np.sort(np.asarray(row_ids, dtype=np.uint64))
        self.seed, self.epoch, self.pos = seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.row_ids)

    def next(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            take = self._order[self.pos : self.pos + n]
            out.append(take)
            self.pos += len(take)
            n -= len(take)
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
        return np.concatenate(out) if out else np.zeros(0, np.uint64)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._shuffle()


@dataclass
class Plan:
    """One step's rows: new-drop row ids, then replay row ids with the arm each was drawn from."""

    step: int
    new_ids: np.ndarray
    replay_ids: np.ndarray
    arm_idx: np.ndarray

    @property
    def row_ids(self) -> np.ndarray:
        return np.concatenate([self.new_ids, self.replay_ids])

    def to_dict(self) -> dict[str, Any]:
        return {k: v if k == "step" else v.tolist() for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            d["step"],
            np.array(d["new_ids"], np.uint64),
            np.array(d["replay_ids"], np.uint64),
            np.array(d["arm_idx"], np.int64),
        )


Rows = pa.Table | dict[str, DropIndex]  # a scanned index (`Memory.index`) or the drops' records (`drop_indexes`)


def planning_rows(memory: Memory, version: int, line: Line, drop_id: str, arms: str = "drop") -> Rows:
    """What planning a refresh reads: the row-id index of the line's drops and the new one from their records
    (O(number of arms), no row read), or a scan of every stored row when one of them predates those indexes."""
    indexes = memory.drop_indexes([*line.trained, drop_id]) if version == memory.version else None
    if indexes and arms == "cluster" and not all(indexes[d].by_cluster for d in line.trained if d in indexes):
        indexes = None  # a drop written before its train rows were grouped by cluster: its arms need the scan
    return indexes if indexes else memory.index(version)


def new_rows(index: Rows, drop_id: str) -> np.ndarray:
    """Row ids of the drop's train sequences."""
    if isinstance(index, dict):
        return index[drop_id].train() if drop_id in index else np.zeros(0, np.uint64)
    mask = pc.and_(pc.equal(index["drop_id"], drop_id), pc.equal(index["split"], "train"))
    return index.filter(mask).column("_rowid").to_numpy()


def indexed_arms(indexes: dict[str, DropIndex], past: list[str], mode: str) -> Arms:
    """`build_arms` from the drops' row-id indexes: the same arms, keys and row ids, each arm held as a range of
    row ids (`RowRange`: a drop's train rows, and each of its clusters, are contiguous), without a scan."""
    keys, drops, rows = [], [], []
    for drop in past:
        parts = [(drop, indexes[drop].train_range())] if mode == "drop" else indexes[drop].arm_ranges()
        for part, (start, stop) in parts:
            if stop > start:
                keys.append(part if mode == "drop" else f"{drop}/{part}")
                drops.append(drop)
                rows.append(RowRange(start, stop))
    return Arms(keys, drops, rows)


def build_line_sampler(settings: Settings, index: Rows, line: Line, strategy: str, rank: int) -> ReplaySampler:
    """The replay sampler over the line's past drops, with its state carried from the previous refresh.

    `NoReplay` (no slot is ever replay) for `none` and for a line with no past drop in `index`.
    """
    cfg = settings.replay.model_copy(update={"strategy": strategy})
    stored = set(index) if isinstance(index, dict) else set(index.column("drop_id").to_pylist())
    past = [d for d in line.trained if d in stored]
    if strategy == "none" or not past:
        return NoReplay(cfg, Arms([], [], []))
    if isinstance(index, dict):
        arms = indexed_arms(index, past, cfg.arms)
    else:
        arms = build_arms(index, past, cfg.arms)
    sampler = build_sampler(cfg, arms, seed=cfg.seed + rank)
    carried = line.state.sampler
    if carried and carried.get("name") == sampler.name:
        sampler.load_state_dict(carried)  # Q values and RNG carry over; new arms join (see replay.base)
        sampler.rng = rank_rng(sampler.rng, rank)  # rank 0's saved stream; the other ranks jump off it
    sampler.set_reference(line.arm_reference(cfg.reference))  # best-ever (default) or last probe loss
    return sampler


class BatchPlanner:
    """Draws every step's row ids for this rank and feeds the replayed rows' losses back to the sampler.

    Its state (the new-data cursor and the sampler, RNG included) is what a checkpoint needs to draw the same
    batches again; under torchrun each rank has its own (the replay streams differ).
    """

    def __init__(self, budget: Budget, slots: Slots, cursor: NewDataCursor, sampler: ReplaySampler, dist: Dist):
        self.budget, self.slots, self.cursor, self.sampler, self.dist = budget, slots, cursor, sampler, dist
        self.replayed_per_arm = np.zeros(sampler.num_arms, np.int64)  # this run's replay rows per arm, all ranks

    @classmethod
    def build(
        cls, settings: Settings, index: Rows, line: Line, drop_id: str, strategy: str, seed: int, dist: Dist
    ) -> BatchPlanner:
        sampler = build_line_sampler(settings, index, line, strategy, dist.rank)
        rows = new_rows(index, drop_id)
        if rows.size == 0:
            raise ValueError(f"drop {drop_id} has no train sequences in this memory version; ingest it first")
        budget = plan_budget(len(rows), settings, sampler.replays)
        slots = local_slots(budget.n_new, budget.n_replay, budget.batch_size, dist.rank, dist.world_size)
        return cls(budget, slots, NewDataCursor(rows, seed), sampler, dist)

    def plan(self, step: int) -> Plan:
        replay_ids, arm_idx = self.sampler.sample(self.slots.n_replay)
        start = self.slots.new_start
        new_ids = self.cursor.next(self.budget.n_new)[start : start + self.slots.n_new]  # this rank's share
        return Plan(step, new_ids, replay_ids, np.asarray(arm_idx, np.int64))

    def feedback(self, plan: Plan, losses: np.ndarray) -> None:
        """One bandit step from the step's per-row losses (replay rows follow the new rows), summed over ranks."""
        if not self.sampler.replays:
            return
        stats = self.sampler.arm_stats(plan.arm_idx, losses[len(plan.new_ids) :])
        self.sampler.update_from_stats(*self.dist.all_reduce_sum(*stats))
        np.add.at(self.replayed_per_arm, plan.arm_idx, 1)

    def replay_by_drop(self) -> dict[str, int]:
        """Replay rows per past drop over this run, all ranks (a collective)."""
        (counts,) = self.dist.all_reduce_sum(self.replayed_per_arm)
        out: dict[str, int] = {}
        for drop, count in zip(self.sampler.arms.drop_ids, counts.tolist(), strict=True):
            out[drop] = out.get(drop, 0) + count
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.sampler.load_state_dict(state["sampler"])
