"""Train one new drop with replay at the compute of plain fine-tuning (the "zero-cost" budget).

`train_drop` wires the parts and runs the steps: a `BatchPlanner` (new-drop cursor + replay sampler, see
planner.py) draws each step's rows, a `Prefetcher` reads them from LanceDB ahead of the trainer (prefetch.py), the
`Trainer` steps and returns per-row losses that go back to the sampler, and a `Checkpointer` saves every stateful
part every `checkpoint_every` steps, so a killed run resumes where it stopped and ends with the same weights.
Under torchrun every rank runs this with its `Dist` (ranks.py); one process is a world of size 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.training.checkpoint import Checkpointer, TorchRNG
from components.training.compat import check_model
from components.training.model import build_model, load_model, save_model
from components.training.planner import BatchPlanner, planning_rows
from components.training.prefetch import Prefetcher
from components.training.ranks import Dist, verify_ranks
from components.training.trainer import Trainer, pinned

PROBS_EVERY = 10  # steps between arm-probability snapshots


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

    def record(self) -> dict:
        """The line's history row: everything but the probability trace (logged to MLflow instead)."""
        return {k: v for k, v in asdict(self).items() if k != "arm_probabilities"}


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
    dist = dist or Dist.single(settings.train.device)
    strategy = strategy or settings.replay.strategy
    if drop_id in line.trained:
        raise ValueError(f"{line.name} has already trained on drop {drop_id}")
    version = memory.version
    seed = settings.train.seed + len(line.trained)  # the same refresh gets the same seed in every process
    rows = planning_rows(memory, version, line, drop_id, settings.replay.arms)  # from the drop records: no scan
    planner = BatchPlanner.build(settings, rows, line, drop_id, strategy, seed, dist)
    budget, sampler = planner.budget, planner.sampler
    model = _starting_model(settings, line, memory.meta(), memory.tokenizer_identity())
    trainer = Trainer(model, settings.train, budget.steps, dist=dist)
    torch.manual_seed(seed)  # dropout; a resumed run restores the RNG from its checkpoint instead

    def fetch(ids):
        tokens, lengths = memory.take(ids, version)
        return pinned(tokens, lengths) if trainer.device.type == "cuda" else (tokens, lengths)

    prefetch = Prefetcher(planner, fetch, settings.replay.prefetch_batches, budget.steps)
    ckpt = Checkpointer(
        line.checkpoints(drop_id),
        model,
        {"trainer": trainer, "torch_rng": TorchRNG()},
        rank_parts={"planner": planner, "prefetch": prefetch},
        dist=dist,
    )
    resumed = ckpt.load()
    result = TrainResult(drop_id, strategy, version, budget.steps, budget.sequences, 0, 0, 0.0, math.nan, resumed)
    result.arm_keys = list(sampler.arms.keys)
    start = time.perf_counter()
    with prefetch:
        for plan, tokens, lengths, waited in prefetch.batches(trainer.step_idx):
            tick = time.perf_counter()
            losses = trainer.step(tokens, lengths)
            planner.feedback(plan, losses)
            step = trainer.step_idx
            stats = dict(
                trainer.last_stats,
                replay_share=len(plan.replay_ids) / len(losses),
                sequences_per_s=len(losses) * dist.world_size / (time.perf_counter() - tick),
                data_wait_s=waited,  # time the trainer waited on the prefetcher (LanceDB); ~0 when it keeps up
            )
            if sampler.replays and (step % PROBS_EVERY == 0 or step == budget.steps):
                probs = sampler.probabilities().tolist()
                result.arm_probabilities.append(probs)
                result.arm_probability_steps.append(step)
                stats |= {f"arm_p/{key}": p for key, p in zip(sampler.arms.keys, probs, strict=True)}
            if on_step:
                on_step(step, stats)
            if progress:
                progress(step, budget.steps)
            if step % settings.train.checkpoint_every == 0 and step < budget.steps:
                ckpt.save(step)
            result.final_loss = stats["loss"]
    result.wall_seconds = time.perf_counter() - start
    result.new_sequences, result.replay_sequences = budget.steps * budget.n_new, budget.steps * budget.n_replay
    result.replay_by_drop = planner.replay_by_drop() if sampler.replays else {}
    sampler_state = sampler.state_dict() if sampler.replays else None
    result.world_size = dist.world_size
    rows = {
        "new_sequences": budget.steps * planner.slots.n_new,
        "replay_sequences": budget.steps * planner.slots.n_replay,
    }
    result.ranks = verify_ranks(dist, model, sampler_state, rows)
    if dist.is_main:
        origin = settings.train.model if not line.trained else None
        line.commit_training(
            drop_id, version, lambda path: save_model(model, path), sampler_state, result.record(), origin=origin
        )
    dist.barrier()  # the line is committed before any rank returns
    return result


def _starting_model(settings: Settings, line: Line, meta: dict, identity: dict | None) -> torch.nn.Module:
    """The line's latest weights; for the line's first drop, a built-in model sized to the memory's tokenizer or the
    pretrained model of `train.model`, loaded exactly as saved (model.py refuses files that lack a weight).

    Both are checked against the memory's tokenizer first (components.training.compat), before weights load."""
    check_model(settings, meta, identity, line.model_dir)
    if line.model_dir:
        return load_model(line.model_dir)
    return build_model(settings.train, meta["vocab_size"], meta["context_length"], meta["eos_id"], meta["pad_id"])
