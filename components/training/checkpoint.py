"""Resumable checkpoints: nothing pickled, atomic on disk, the last few kept.

Layout of `<ckpt_dir>/step-<n>/`:
  config.json, model*.safetensors  the model, via `save_model` (so `load_model(step_dir)` works too)
  optimizer.safetensors            every tensor of `Trainer.state_dict()` (AdamW moments, step counts)
  rng.safetensors                  torch CPU (and CUDA) generator states, as uint8 tensors
  state.json                       the non-tensor rest of the trainer state, the step, and the caller's `extra`
`<ckpt_dir>/latest` names the newest complete checkpoint; it is the only thing `latest_checkpoint` trusts.

A checkpoint is written into `.tmp-*` next to its final place, fsynced, then renamed; `latest` is
replaced atomically afterwards. A SIGKILL at any moment thus leaves either the previous state or the
new one, plus perhaps a `.tmp-*` leftover that readers ignore and the next save removes. One writer per
directory is assumed (one training process, or rank 0 under torchrun).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from components.training.model import load_model, save_model
from components.training.trainer import Trainer

FORMAT = 1
LATEST = "latest"
STATE = "state.json"
TMP_PREFIX = ".tmp-"
STEP_RE = re.compile(r"^step-(\d+)$")


def save_checkpoint(ckpt_dir: Path, model: PreTrainedModel, trainer: Trainer, extra: dict, keep: int = 2) -> Path:
    """Write `step-<trainer.step_idx>` atomically, point `latest` at it and keep the newest `keep`.

    `extra` holds the caller's resumable state (sampler, data cursor, numpy RNG...) and must be
    JSON-serializable. Step directories newer than this one are leftovers of a killed run that this
    run has just overtaken; they are removed with the old ones.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{trainer.step_idx}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=ckpt_dir))
    try:
        save_model(model, tmp)
        tensors: dict[str, torch.Tensor] = {}
        trainer_state = _encode(trainer.state_dict(), "trainer", tensors)
        save_file(tensors, tmp / "optimizer.safetensors")
        save_file(_rng_states(), tmp / "rng.safetensors")
        try:
            state = {"format": FORMAT, "step": trainer.step_idx, "trainer": trainer_state, "extra": extra}
            text = json.dumps(state, indent=1)
        except TypeError as exc:
            raise TypeError(f"checkpoint `extra` must be JSON-serializable: {exc}") from exc
        (tmp / STATE).write_text(text, encoding="utf-8")
        _fsync_tree(tmp)
        final = _move_into_place(tmp, ckpt_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(ckpt_dir, name)
    _prune(ckpt_dir, keep, trainer.step_idx)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint `latest` points at; None when there is no pointer (a fresh or never-finished run)."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not STEP_RE.match(name):  # also rejects '../x' and absolute paths
        raise ValueError(f"{pointer}: {name!r} is not a checkpoint name of the form step-<n>")
    path = Path(ckpt_dir) / name
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{pointer} names {name}, which is missing or incomplete; delete {pointer} to restart")
    return path


def load_checkpoint(path: Path, model: PreTrainedModel, trainer: Trainer) -> dict:
    """Restore weights, optimizer, step and torch RNG in place; returns the caller's `extra`."""
    path = Path(path)
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this version reads {FORMAT}")
    _restore_weights(model, path)
    trainer.load_state_dict(_decode(state["trainer"], load_file(path / "optimizer.safetensors")))
    _restore_rng(load_file(path / "rng.safetensors"))
    return state["extra"]


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


def _rng_states() -> dict[str, torch.Tensor]:
    """Dropout draws from these; without them a resumed run diverges from an uninterrupted one."""
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"torch_cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[f"torch_cuda.{i}"] for i in range(sum(k.startswith("torch_cuda.") for k in states))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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
    _fsync_dir(final.parent)
    return final


def _write_latest(ckpt_dir: Path, name: str) -> None:
    tmp = ckpt_dir / f"{TMP_PREFIX}{LATEST}-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / LATEST)
    _fsync_dir(ckpt_dir)


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
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
