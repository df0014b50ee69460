"""Train one new drop with replay at the compute of plain fine-tuning (the "zero-cost" budget).

Budget: plain fine-tuning runs T = ceil(epochs * N_new / B) steps of B sequences (or `max_steps`). Every
strategy runs exactly those T x B sequences: `round(replay_fraction * B)` replay slots per batch once past data
exists, minus nothing else (no strategy here spends probe forward passes: the bandit's signal is the replayed
rows' own loss from the training forward pass; a strategy that did would have `extra_forward_sequences`
charged by cutting new-data rows).

Prefetch: batch plans (row ids) are made `prefetch_batches` steps ahead and fetched from LanceDB in a background
thread, so the trainer never waits on the store. The bandit therefore sees its feedback with that delay: the plan
for step t+d is drawn from probabilities updated through step t-1. The pending plans are part of the
checkpoint, so a resumed run replays exactly the same batches and ends with the same weights. On CUDA the
prefetcher also widens and pins the batch, so the copy to the GPU is asynchronous.

Under torchrun every rank calls `train_drop` with its `Dist`: the same budget split over the ranks, each its own
replay stream, bandit statistics all-reduced every step, rank 0 alone writing (components/training/distributed.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import torch

from components.config import Settings
from components.lines import Line
from components.memory import Memory
from components.replay import Arms, ReplaySampler, build_arms, build_sampler
from components.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from components.training.distributed import Dist, local_slots, rank_rng, rank_states, verify_ranks
from components.training.model import build_model, load_model
from components.training.trainer import Trainer, pinned

PROBS_EVERY = 10  # steps between arm-probability snapshots


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    n_new: int
    n_replay: int

    @property
    def sequences(self) -> int:
        return self.steps * self.batch_size


def plan_budget(n_new_rows: int, settings: Settings, replaying: bool, extra_forward: int = 0) -> Budget:
    """The plain fine-tuning budget, split into new and replay slots (same total for every strategy)."""
    cfg = settings.train
    steps = max(1, math.ceil(cfg.epochs * n_new_rows / cfg.batch_size))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    n_replay = round(settings.replay.replay_fraction * cfg.batch_size) if replaying else 0
    n_new = cfg.batch_size - n_replay - extra_forward
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

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._shuffle()


@dataclass
class Plan:
    step: int
    new_ids: np.ndarray
    replay_ids: np.ndarray
    arm_idx: np.ndarray

    def to_dict(self) -> dict:
        return {k: v if k == "step" else v.tolist() for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            d["step"],
            np.array(d["new_ids"], np.uint64),
            np.array(d["replay_ids"], np.uint64),
            np.array(d["arm_idx"], np.int64),
        )


@dataclass
class TrainResult:
    drop_id: str
    strategy: str
    memory_version: int
    steps: int
    sequences: int
    new_sequences: int
    replay_sequences: int
    wall_seconds: float
    final_loss: float
    resumed_from_step: int = 0
    replay_by_drop: dict[str, int] = field(default_factory=dict)
    arm_keys: list[str] = field(default_factory=list)
    arm_probabilities: list[list[float]] = field(default_factory=list)  # snapshot every PROBS_EVERY steps
    arm_probability_steps: list[int] = field(default_factory=list)
    world_size: int = 1
    ranks: list[dict] = field(default_factory=list)  # under torchrun: each rank's rows and weight/bandit digests


def _new_rows(index, drop_id: str) -> np.ndarray:
    mask = pc.and_(pc.equal(index["drop_id"], drop_id), pc.equal(index["split"], "train"))
    return index.filter(mask).column("_rowid").to_numpy()


def _sampler(settings: Settings, arms: Arms | None, line: Line, strategy: str, rank: int) -> ReplaySampler | None:
    if arms is None or strategy == "none":
        return None
    cfg = settings.replay.model_copy(update={"strategy": strategy})
    sampler = build_sampler(cfg, arms, seed=cfg.seed + rank)
    carried = line.state.get("sampler")
    if carried and carried.get("name") == sampler.name:
        sampler.load_state_dict(carried)  # Q values and RNG carry over; new arms join (see replay.base)
        sampler.rng = rank_rng(sampler.rng, rank)  # rank 0's saved stream; the other ranks jump off it
    sampler.set_reference(line.state.get("arm_ref", {}))
    return sampler


def _resume(extra: dict, cursor: NewDataCursor, sampler: ReplaySampler | None, rank: int, world: int) -> list[Plan]:
    """Restore the data cursor, the sampler and this rank's prefetched plans from a checkpoint's `extra`."""
    saved = extra.get("world_size", 1)
    if saved != world:
        raise ValueError(f"the checkpoint was written by {saved} process(es): resume with train.nproc = {saved}")
    cursor.load_state_dict(extra["cursor"])
    own = extra["ranks"][rank] if world > 1 else extra
    if sampler is not None:
        sampler.load_state_dict(extra["sampler"])
        if world > 1:
            sampler.rng.bit_generator.state = own["rng"]
    return [Plan.from_dict(p) for p in own["pending"]]


def train_drop(
    settings: Settings,
    memory: Memory,
    line: Line,
    drop_id: str,
    strategy: str | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    dist: Dist | None = None,
) -> TrainResult:
    """Train `line`'s model on `drop_id`, replaying its past drops; resumes from the drop's last checkpoint.

    Under torchrun every rank calls this with its `dist`; `on_step` and `progress` are wanted on rank 0 only.
    """
    strategy = strategy or settings.replay.strategy
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    if drop_id in line.trained:
        raise ValueError(f"{line.name} has already trained on drop {drop_id}")
    version = memory.version
    meta = memory.meta()
    index = memory.index(version)
    past = [d for d in line.trained if d in set(index.column("drop_id").to_pylist())]
    arms = build_arms(index, past, settings.replay.arms) if past else None
    sampler = _sampler(settings, arms, line, strategy, rank)
    new_rows = _new_rows(index, drop_id)
    if new_rows.size == 0:
        raise ValueError(f"drop {drop_id} has no train sequences in memory version {version}; ingest it first")
    budget = plan_budget(
        len(new_rows), settings, sampler is not None, sampler.extra_forward_sequences if sampler else 0
    )
    slots = local_slots(budget.n_new, budget.n_replay, budget.batch_size, rank, world)

    model = (
        load_model(line.model_dir)
        if line.model_dir
        else build_model(settings.train, meta["vocab_size"], meta["context_length"], meta["eos_id"], meta["pad_id"])
    )
    trainer = Trainer(model, settings.train, budget.steps, device=dist.device if dist else None, dist=dist)
    seed = settings.train.seed + len(line.trained)  # the same refresh gets the same seed in every process
    torch.manual_seed(seed)  # dropout; a resumed run restores the RNG from its checkpoint instead
    cursor = NewDataCursor(new_rows, seed)
    ckpt_dir = line.checkpoints(drop_id)
    pending: list[Plan] = []
    resumed = 0
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        pending = _resume(load_checkpoint(ckpt, model, trainer), cursor, sampler, rank, world)
        resumed = trainer.step_idx

    def make_plan(step: int) -> Plan:
        replay_ids, arm_idx = sampler.sample(slots.n_replay) if sampler else (np.zeros(0, np.uint64),) * 2
        new_ids = cursor.next(budget.n_new)[slots.new_start : slots.new_start + slots.n_new]  # this rank's share
        return Plan(step, new_ids, replay_ids, np.asarray(arm_idx, np.int64))

    def fetch(ids: np.ndarray) -> tuple:
        tokens, lengths = memory.take(ids, version)
        return pinned(tokens, lengths) if trainer.device.type == "cuda" else (tokens, lengths)

    result = TrainResult(
        drop_id,
        strategy,
        version,
        budget.steps,
        budget.sequences,
        0,
        0,
        0.0,
        math.nan,
        resumed,
        arm_keys=list(arms.keys) if sampler else [],
    )
    replay_arm_counts = np.zeros(len(arms) if sampler else 0, np.int64)
    start = time.perf_counter()
    depth = settings.replay.prefetch_batches
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="amr-prefetch") as pool:

        def submit(plan: Plan) -> tuple[Plan, Future]:
            ids = np.concatenate([plan.new_ids, plan.replay_ids])
            return plan, pool.submit(fetch, ids)

        queue: deque[tuple[Plan, Future]] = deque(submit(p) for p in pending)
        next_step = trainer.step_idx + len(queue)
        while len(queue) < depth and next_step < budget.steps:
            queue.append(submit(make_plan(next_step)))
            next_step += 1
        while queue:
            plan, future = queue.popleft()
            if next_step < budget.steps:
                queue.append(submit(make_plan(next_step)))
                next_step += 1
            wait = time.perf_counter()
            tokens, lengths = future.result()
            tick = time.perf_counter()
            losses = trainer.step(tokens, lengths)
            if sampler is not None:
                feedback = sampler.arm_stats(plan.arm_idx, losses[len(plan.new_ids) :])
                sampler.update_from_stats(*(dist.all_reduce_sum(*feedback) if dist else feedback))
                np.add.at(replay_arm_counts, plan.arm_idx, 1)
            step = trainer.step_idx
            stats = dict(
                trainer.last_stats,
                replay_share=len(plan.replay_ids) / len(losses),
                sequences_per_s=len(losses) * world / (time.perf_counter() - tick),
                data_wait_s=tick - wait,  # time the trainer waited on the prefetcher (LanceDB); ~0 when it keeps up
            )
            if sampler is not None and (step % PROBS_EVERY == 0 or step == budget.steps):
                probs = sampler.probabilities().tolist()
                result.arm_probabilities.append(probs)
                result.arm_probability_steps.append(step)
                stats |= {f"arm_p/{key}": p for key, p in zip(arms.keys, probs, strict=True)}
            if on_step:
                on_step(step, stats)
            if progress:
                progress(step, budget.steps)
            if step % settings.train.checkpoint_every == 0 and step < budget.steps:
                extra = {
                    "cursor": cursor.state_dict(),
                    "sampler": sampler.state_dict() if sampler else None,
                    "pending": [p.to_dict() for p, _ in queue],
                }
                if dist is not None:  # a collective: every rank's stream and plans, saved by rank 0
                    rng = sampler.rng.bit_generator.state if sampler else None
                    extra |= rank_states(dist, rng, extra["pending"])
                if dist is None or dist.is_main:
                    save_checkpoint(ckpt_dir, model, trainer, extra)
            result.final_loss = stats["loss"]
    result.wall_seconds = time.perf_counter() - start
    result.replay_sequences = budget.steps * budget.n_replay
    result.new_sequences = budget.steps * budget.n_new
    if dist is not None:
        (replay_arm_counts,) = dist.all_reduce_sum(replay_arm_counts)
    if sampler is not None:
        for key_drop, count in zip(arms.drop_ids, replay_arm_counts.tolist(), strict=True):
            result.replay_by_drop[key_drop] = result.replay_by_drop.get(key_drop, 0) + count
    sampler_state = sampler.state_dict() if sampler else None
    if dist is not None:
        result.world_size = world
        rows = {"new_sequences": budget.steps * slots.n_new, "replay_sequences": budget.steps * slots.n_replay}
        result.ranks = verify_ranks(dist, model, sampler_state, rows)
    if dist is None or dist.is_main:
        line.commit_training(model, drop_id, version, sampler_state, result)
    if dist is not None:
        dist.barrier()  # the line is committed before any rank returns
    return result
