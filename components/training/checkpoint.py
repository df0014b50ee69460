"""Resumable checkpoints of named stateful parts, the way torchtitan's checkpointer works: nothing pickled, atomic.

A `Checkpointer` is given the model and a mapping of named parts, each with `state_dict()` / `load_state_dict()`
(the trainer with its optimizer, the torch RNG, the batch planner, the prefetcher). `save(step)` writes them all,
`load()` restores them all. Parts are either shared (identical on every rank: saved once, by rank 0) or per rank
(the replay RNG and prefetched plans differ between torchrun ranks: gathered as JSON and saved as a list).

Layout of `<ckpt_dir>/step-<n>/`:
  config.json, model*.safetensors  the model, via `save_model` (so `load_model(step_dir)` works too)
  state.safetensors                every tensor of the shared parts (AdamW moments, RNG states), by dotted key
  state.json                       format, step, world size, the shared parts' non-tensor rest, every rank's parts

A checkpoint is written into `.tmp-*` next to its final place, fsynced, then renamed: a `step-<n>` directory is
complete by construction, and the newest one is what a resume loads (`latest_checkpoint`). A SIGKILL at any moment
thus leaves the previous checkpoints or the new one, plus perhaps a `.tmp-*` leftover that readers ignore and the
next save removes. No separate "latest" pointer: with one, a kill between the rename and the pointer's update
resumed from an older checkpoint than the newest on disk. One writer per directory (rank 0).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from components.core.files import fsync_dir
from components.training.model import WeightsError, check_weights, load_model, save_model
from components.training.ranks import Dist

FORMAT = 3  # 3: row ids are ordinals of the memory version (components.adapters.memory); 2 held addresses
STATE = "state.json"
TENSORS = "state.safetensors"
TMP_PREFIX = ".tmp-"
STEP_RE = re.compile(r"^step-(\d+)$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TorchRNG:
    """torch's global CPU (and CUDA) generators as a part: dropout draws from them, so a resume must restore them."""

    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"cpu": torch.get_rng_state(), "cuda": list(cuda)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores `model` plus named parts under `ckpt_dir`; under torchrun a collective, rank 0 writing."""

    def __init__(
        self,
        ckpt_dir: Path,
        model: PreTrainedModel,
        parts: Mapping[str, Stateful],
        rank_parts: Mapping[str, Stateful] | None = None,
        dist: Dist | None = None,
        keep: int = 2,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir, self.model, self.keep = Path(ckpt_dir), model, keep
        self.parts, self.rank_parts = dict(parts), dict(rank_parts or {})
        self.dist = dist or Dist.single("cpu")

    def save(self, step: int) -> Path | None:
        """Write `step-<step>` with every part; returns its path on rank 0 (None on the other ranks)."""
        ranks = self.dist.all_gather_json({name: part.state_dict() for name, part in self.rank_parts.items()})
        if not self.dist.is_main:
            return None
        shared = {name: part.state_dict() for name, part in self.parts.items()}
        return save_checkpoint(self.dir, step, self.model, shared, ranks, self.keep)

    def load(self) -> int:
        """Restore every part from the latest checkpoint; returns its step, or 0 when there is none."""
        path = latest_checkpoint(self.dir)
        if path is None:
            return 0
        step, shared, ranks = load_checkpoint(path, self.model)
        if len(ranks) != self.dist.world_size:
            raise ValueError(f"{path} was written by {len(ranks)} process(es): resume with train.nproc = {len(ranks)}")
        for name, part in self.parts.items():
            part.load_state_dict(shared[name])
        for name, part in self.rank_parts.items():
            part.load_state_dict(ranks[self.dist.rank][name])
        return step


def save_checkpoint(
    ckpt_dir: Path, step: int, model: PreTrainedModel, shared: dict[str, Any], ranks: list[dict], keep: int = 2
) -> Path:
    """Write `step-<step>` atomically, point `latest` at it and keep the newest `keep`.

    `shared` maps part names to state dicts (tensors go to safetensors, the rest must be JSON-serializable);
    `ranks` holds each rank's JSON-only parts. Step directories newer than this one are leftovers of a killed run
    that this run has just overtaken; they are removed with the old ones.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=ckpt_dir))
    try:
        save_model(model, tmp)
        tensors: dict[str, torch.Tensor] = {}
        parts = {key: _encode(value, key, tensors) for key, value in shared.items()}
        save_file(tensors, tmp / TENSORS)
        state = {"format": FORMAT, "step": step, "world_size": len(ranks), "parts": parts, "ranks": ranks}
        try:
            text = json.dumps(state, indent=1)
        except TypeError as exc:
            raise TypeError(f"checkpoint parts must hold tensors and JSON-serializable values: {exc}") from exc
        (tmp / STATE).write_text(text, encoding="utf-8")
        _fsync_tree(tmp)
        final = _move_into_place(tmp, ckpt_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(ckpt_dir, keep, step)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint (`step-<n>` with its state file); None for a fresh or never-saved run."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    complete = [(n, p) for n, p in steps if (p / STATE).is_file()]
    return max(complete)[1] if complete else None


def load_checkpoint(path: Path, model: PreTrainedModel) -> tuple[int, dict[str, Any], list[dict]]:
    """Restore the weights into `model` in place; returns (step, shared parts' states, every rank's parts)."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is damaged ({path / STATE}: {exc}). Fix: delete {path}; the run resumes from the checkpoint "
            "before it, or from the drop's start"
        ) from None
    try:
        check_weights(path)  # every *.safetensors here: truncated or damaged files are named, not half-loaded
    except WeightsError as exc:
        raise ValueError(
            f"{path} is damaged ({exc}). Fix: delete {path}; the run resumes from the checkpoint before it, or from "
            "the drop's start"
        ) from None
    if state.get("format") != FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {state.get('format')!r}, this version reads {FORMAT}; delete "
            f"{path.parent} to train the drop from its start"
        )
    _restore_weights(model, path)
    tensors = load_file(path / TENSORS)
    return int(state["step"]), {k: _decode(v, tensors) for k, v in state["parts"].items()}, state["ranks"]


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `obj`, its tensors moved into `tensors` under dotted keys (int dict keys kept)."""
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"two tensors of the trainer state map to the key {key!r}")
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = [(k, _encode(v, f"{key}.{k}", tensors)) for k, v in obj.items()]
        return dict(items) if all(isinstance(k, str) for k in obj) else {"__items__": [list(kv) for kv in items]}
    if isinstance(obj, list | tuple):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if obj.keys() == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if obj.keys() == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _restore_weights(model: PreTrainedModel, path: Path) -> None:
    """Copy the saved weights into `model`; tied weights (GPT-2's lm_head) are saved once and refilled by the tie."""
    saved: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("model*.safetensors")):
        saved.update(load_file(file))
    own = model.state_dict(keep_vars=True)
    if not saved.keys() <= own.keys():  # written in a converted on-disk layout: let transformers map it back
        saved = load_model(path).state_dict()
    missing, _ = model.load_state_dict(saved, strict=False)
    filled = {own[k].data_ptr() for k in saved}
    untouched = [k for k in missing if own[k].data_ptr() not in filled]
    if untouched:
        raise ValueError(f"{path}: checkpoint lacks weights {untouched[:5]} of this model (another architecture?)")


def _move_into_place(tmp: Path, final: Path) -> Path:
    """Rename `tmp` to `final`; an existing `final` (the same step saved again after a resume) is swapped out."""
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def _prune(ckpt_dir: Path, keep: int, current: int) -> None:
    steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir())
    stale = [n for n in steps if n > current] + [n for n in steps if n <= current][:-keep]
    for n in stale:
        shutil.rmtree(ckpt_dir / f"step-{n}", ignore_errors=True)
    for p in ckpt_dir.glob(f"{TMP_PREFIX}*"):  # leftovers of writers killed mid-save
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)
