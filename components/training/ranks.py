"""Where this process trains: its device and its place in the torchrun group, and the few collectives the loop needs.

One process is a world of size 1 (`Dist.single`): its collectives return their input and `wrap` returns the model,
so the training loop has no single-process branch. Under torchrun (components/training/launcher.py) each rank joins
the group with `init_distributed`. How the ranks share one drop:

- Budget: the single-process one, T steps of B = `train.batch_size` sequences; B is split evenly over the ranks
  (it must divide), so every N trains exactly T x B sequences.
- New data: every rank walks the same seeded cursor and keeps its own slice of each step's rows, so the union of
  the ranks' new rows at step t is what one process would train on at step t.
- Replay: every rank draws its own slots from its own stream: `replay.seed + rank` for a fresh sampler; for state
  carried from the previous refresh (saved by rank 0), rank r jumps rank 0's PCG64 stream r times. Rank 0 thus
  keeps the single-process stream, and the others get distinct streams that follow from the saved state alone.
- Bandit: each step, the ranks' per-arm (loss sum, count) are all-reduced and every rank calls
  `update_from_stats` with the totals, so Q, pulls and step are identical everywhere; only the RNGs differ.
- Gradients: DDP averages over ranks; the trainer scales each rank's loss so the gradient is the mean over every
  real token of the global batch, as in one process.
- Rank 0 alone writes checkpoints, the line's commit and MLflow records. A checkpoint also carries every rank's
  own parts (sampler RNG, prefetched plans), gathered as JSON, nothing pickled: a resume with the same N is exact.
- At the end the ranks compare digests of their weights and bandit state and fail, before committing, if any
  differs: a silent desync would otherwise ship a model nobody trained.

Dropout draws from the same torch seed on every rank (different rows get the masks), so rank 0's torch RNG in a
checkpoint is every rank's RNG.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

BANDIT_KEYS = ("keys", "q", "pulls", "last_pull", "step")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group, and the collectives the loop needs (all blocking, all ranks)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # the training device; collectives' tensors live here (CPU for gloo, CUDA for NCCL)

    @classmethod
    def single(cls, device: str | torch.device | None = None) -> Dist:
        """A world of one process: every collective is the identity."""
        return cls(0, 1, 0, resolve_device(device))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP over `model` (already on `self.device`), which broadcasts rank 0's weights once; one process: `model`."""
        if self.world_size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def all_reduce_sum(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Element-wise sums over ranks (arrays or scalars), in one collective; float64 holds counts exactly."""
        arrays = tuple(np.asarray(a) for a in arrays)
        if self.world_size == 1:
            return list(arrays)
        flat = torch.from_numpy(np.concatenate([a.astype(np.float64).ravel() for a in arrays])).to(self.device)
        tdist.all_reduce(flat)
        flat = flat.cpu().numpy()
        out, start = [], 0
        for a in arrays:
            chunk = flat[start : start + a.size].reshape(a.shape)
            out.append(np.rint(chunk).astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else chunk)
            start += a.size
        return out

    def all_gather_json(self, obj: Any) -> list[Any]:
        """Every rank's JSON-serializable `obj`, in rank order: bytes in uint8 tensors, so nothing is unpickled."""
        if self.world_size == 1:
            return [json.loads(json.dumps(obj))]
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        tdist.all_gather(sizes, size)
        lengths = [int(s.item()) for s in sizes]
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=self.device)
        padded[: data.numel()] = data
        chunks = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(chunks, padded)
        return [json.loads(bytes(c[:n].cpu().tolist())) for c, n in zip(chunks, lengths, strict=True)]

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        if self.device.type == "cuda":
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()


def init_distributed(device: str) -> Dist:
    """Join the torchrun group named by RANK / WORLD_SIZE: NCCL on CUDA, else gloo; a world of one without torchrun.

    On CUDA each rank takes the GPU of its LOCAL_RANK, whatever index `device` names.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return Dist.single(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        tdist.init_process_group("nccl", device_id=dev)
    else:
        tdist.init_process_group("gloo")
    return Dist(rank, world, local_rank, dev)


@dataclass(frozen=True)
class Slots:
    """One rank's share of every batch: `n_new` rows from `new_start` in the step's new rows, `n_replay` replay."""

    n_new: int
    n_replay: int
    new_start: int


def _share(n: int, i: int, world: int) -> int:
    return n // world + (i < n % world)


def local_slots(n_new: int, n_replay: int, batch_size: int, rank: int, world: int) -> Slots:
    """Split a step's new and replay slots over the ranks, each rank holding `batch_size / world` rows.

    Replay remainders go to the low ranks and new-data remainders to the high ranks, so the rows per rank stay
    equal (DDP and gradient accumulation need the same micro-batches on every rank). One rank: everything.
    """
    if batch_size % world:
        raise ValueError(f"train.batch_size ({batch_size}) must be a multiple of train.nproc ({world})")
    new_start = sum(_share(n_new, world - 1 - r, world) for r in range(rank))
    return Slots(_share(n_new, world - 1 - rank, world), _share(n_replay, rank, world), new_start)


def rank_rng(rng: np.random.Generator, rank: int) -> np.random.Generator:
    """Rank r's replay stream derived from rank 0's: the same generator for rank 0, jumped r times otherwise."""
    return rng if rank == 0 else np.random.Generator(rng.bit_generator.jumped(rank))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names and raw bytes, in order): equal iff bitwise equal."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bandit_digest(state: Mapping[str, Any] | None) -> str | None:
    """sha256 of a sampler state's shared part (arms, Q, pulls, last pulls, step), without its RNG."""
    if state is None:
        return None
    shared = {k: state[k] for k in BANDIT_KEYS}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()


def verify_ranks(dist: Dist, model: torch.nn.Module, sampler_state: dict | None, rows: dict[str, int]) -> list[dict]:
    """Gather each rank's digests and row counts; raise unless weights and bandit state agree everywhere.

    A world of one has nothing to compare and returns [] without hashing the weights."""
    if dist.world_size == 1:
        return []
    mine = {"rank": dist.rank, "weights_sha256": weights_digest(model), "bandit_sha256": bandit_digest(sampler_state)}
    ranks = dist.all_gather_json(mine | rows)
    for key in ("weights_sha256", "bandit_sha256"):
        if len({r[key] for r in ranks}) != 1:
            raise RuntimeError(f"DDP ranks disagree on {key}: {[r[key] for r in ranks]}; nothing was committed")
    return ranks
