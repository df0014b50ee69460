"""Data-parallel training of one drop under torchrun: one process per device, each drawing its own replay.

`amr train --nproc N` and the refresh flow (with `train.nproc > 1`) call `launch`, which runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m components.training.distributed ...`; each
process runs `main`, which calls `train_drop` with its `Dist`. How the ranks share one drop:

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
  sampler RNG and prefetched plans (gathered as JSON, nothing pickled): a resume with the same N is exact.
- At the end the ranks compare digests of their weights and bandit state and fail, before committing, if any
  differs: a silent desync would otherwise ship a model nobody trained.

Dropout draws from the same torch seed on every rank (different rows get the masks), so rank 0's torch RNG in a
checkpoint is every rank's RNG.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from components.training.trainer import resolve_device

if TYPE_CHECKING:
    from components.config import Settings
    from components.lines import Line
    from components.training.loop import TrainResult

ROOT = Path(__file__).resolve().parents[2]  # holds the `components` package, for the ranks' PYTHONPATH
BANDIT_KEYS = ("keys", "q", "pulls", "last_pull", "step")


@dataclass(frozen=True)
class Dist:
    """This process's place in the group, and the few collectives the loop needs (all blocking, all ranks)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # the training device; collectives' tensors live here (CPU for gloo, CUDA for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel:
        """DDP over `model` (already on `self.device`); it broadcasts rank 0's weights once, here."""
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def all_reduce_sum(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Element-wise sums over ranks (arrays or scalars), in one collective; float64 holds counts exactly."""
        arrays = tuple(np.asarray(a) for a in arrays)
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
        if self.device.type == "cuda":
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()


def init_distributed(device: str) -> Dist | None:
    """Join the torchrun group named by RANK / WORLD_SIZE (None when there is none): NCCL on CUDA, else gloo.

    On CUDA each rank takes the GPU of its LOCAL_RANK, whatever index `device` names.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
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


def rank_states(dist: Dist, rng_state: dict | None, pending: list[dict]) -> dict:
    """Checkpoint entries holding every rank's sampler RNG and prefetched plans (a collective; rank 0 saves)."""
    return {"world_size": dist.world_size, "ranks": dist.all_gather_json({"rng": rng_state, "pending": pending})}


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
    """Gather each rank's digests and row counts; raise unless weights and bandit state agree everywhere."""
    mine = {"rank": dist.rank, "weights_sha256": weights_digest(model), "bandit_sha256": bandit_digest(sampler_state)}
    ranks = dist.all_gather_json(mine | rows)
    for key in ("weights_sha256", "bandit_sha256"):
        if len({r[key] for r in ranks}) != 1:
            raise RuntimeError(f"DDP ranks disagree on {key}: {[r[key] for r in ranks]}; nothing was committed")
    return ranks


def launch(settings: Settings, line: Line, drop_id: str, run_id: str | None = None) -> TrainResult:
    """Train `drop_id` on `settings.train.nproc` local processes under torchrun; reloads `line`'s state after.

    The ranks get the resolved settings as a file and no AMR_* variable, so what they run is exactly `settings`
    (command-line overrides included). With `run_id`, rank 0 logs the step metrics into that MLflow run.
    """
    from components.training.loop import TrainResult

    if drop_id in line.trained:
        raise ValueError(f"{line.name} has already trained on drop {drop_id}")
    nproc = settings.train.nproc
    local_slots(0, 0, settings.train.batch_size, 0, nproc)  # fail here, not in N tracebacks
    with tempfile.TemporaryDirectory(prefix="amr-torchrun-") as tmp:
        config, result = Path(tmp) / "settings.json", Path(tmp) / "result.json"
        config.write_text(settings.model_dump_json(), encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", __name__, "--settings", str(config), "--line", line.name, "--drop", drop_id]
        cmd += ["--result", str(result), "--launcher-pid", str(os.getpid())] + (["--run-id", run_id] if run_id else [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMR_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"torchrun with {nproc} processes exited with {code}; the ranks' errors are above")
        data = json.loads(result.read_text(encoding="utf-8"))
    line.state = type(line)(settings.home, line.name).state
    return TrainResult(**data)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def die_with(launcher_pid: int) -> None:
    """Exit when the launcher or the torchrun agent dies, even by SIGKILL.

    torchrun starts each rank in a session of its own, so killing the launcher's process group (a crashed flow
    worker, Ctrl-C twice, the OOM killer) would leave the ranks training and then committing behind the back of
    the retry that resumes the same drop. PR_SET_PDEATHSIG ties a rank to the agent; a watcher thread to the launcher.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while _alive(launcher_pid):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="amr-launcher-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, train the drop, and (rank 0) write the result for `launch`."""
    from components.config import Settings
    from components.lines import Line, write_json_atomic
    from components.memory import Memory
    from components.training.loop import train_drop

    parser = argparse.ArgumentParser(description="One torchrun rank of `amr train --nproc N` (started by launch).")
    for flag in ("--settings", "--line", "--drop", "--result"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--launcher-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.launcher_pid:
        die_with(args.launcher_pid)
    settings = Settings(**json.loads(Path(args.settings).read_text(encoding="utf-8")))
    dist = init_distributed(settings.train.device)
    if dist is None:
        raise SystemExit("run under torchrun with more than one process (`amr train --nproc N` does)")
    try:
        logger = None
        if dist.is_main and args.run_id:
            from components import registry
            from components.refresh import StepLogger

            registry.configure(settings)
            logger = StepLogger(args.run_id)
        memory, line = Memory.open(settings), Line(settings.home, args.line)
        result = train_drop(settings, memory, line, args.drop, on_step=logger, dist=dist)
        if logger is not None:
            logger.flush()
        if dist.is_main:
            write_json_atomic(Path(args.result), asdict(result))
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
