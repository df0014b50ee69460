"""Checkpoints resume bitwise, survive SIGKILL, and never pickle.

Run as a script (`python tests/test_checkpoint.py CKPT_DIR`), this file is the training process that
the SIGKILL test kills: it checkpoints at step 4, trains on, and hangs inside the step-8 save (after
writing its files, before the rename) so the kill lands at the worst moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from components.core.config import TrainConfig
from components.training import Checkpointer, Trainer, build_model, latest_checkpoint, load_model, save_checkpoint
from components.training import checkpoint as checkpoint_module
from components.training.checkpoint import TorchRNG

REPO = Path(__file__).resolve().parents[1]
TEXT = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/shutil.py").read_bytes()
VOCAB, CTX, EOS, PAD = 384, 32, 1, 0
TOTAL, EVERY = 12, 4
ROWS = 64
DATA = (np.frombuffer(TEXT, dtype=np.uint8)[: ROWS * CTX].astype(np.int32) + 3).reshape(ROWS, CTX)
LENGTHS = np.where(np.arange(ROWS) % 3 == 0, CTX // 2, CTX)  # some padded rows
DATA[LENGTHS < CTX, CTX // 2 :] = PAD


class Box:
    """A stateful part holding any value (the data RNG's state, a note), as the loop's planner and prefetcher do."""

    def __init__(self, value=None):
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def checkpointer(ckpt_dir: Path, model: torch.nn.Module, trainer: Trainer, box: Box) -> Checkpointer:
    return Checkpointer(ckpt_dir, model, {"trainer": trainer, "torch_rng": TorchRNG()}, rank_parts={"box": box})


def make() -> tuple[torch.nn.Module, Trainer]:
    """A fresh tiny GPT-2 with dropout on (Hugging Face's default 0.1), so resuming needs the RNG state."""
    cfg = TrainConfig(n_layer=1, n_embd=32, n_head=4, lr=1e-2, warmup_steps=3, device="cpu", seed=0)
    model = build_model(cfg, VOCAB, CTX, EOS, PAD)
    assert model.config.resid_pdrop > 0
    return model, Trainer(model, cfg, total_steps=TOTAL)


def train(
    model: torch.nn.Module,
    trainer: Trainer,
    rng: np.random.Generator,
    ckpt_dir: Path | None = None,
    on_save: Callable[[int], None] = lambda step: None,
) -> None:
    """Train to TOTAL on batches drawn by `rng`, checkpointing every EVERY steps with the data RNG as a part."""
    while trainer.step_idx < TOTAL:
        rows = rng.integers(0, ROWS, size=4)
        trainer.step(DATA[rows], LENGTHS[rows])
        if ckpt_dir is not None and trainer.step_idx % EVERY == 0:
            checkpointer(ckpt_dir, model, trainer, Box(rng.bit_generator.state)).save(trainer.step_idx)
            on_save(trainer.step_idx)


def resume(ckpt_dir: Path) -> tuple[torch.nn.Module, Trainer, np.random.Generator]:
    model, trainer = make()
    box = Box()
    assert checkpointer(ckpt_dir, model, trainer, box).load() == trainer.step_idx > 0
    rng = np.random.default_rng()
    rng.bit_generator.state = box.value
    return model, trainer, rng


@pytest.fixture(scope="module")
def straight() -> dict[str, torch.Tensor]:
    """Weights after TOTAL uninterrupted steps."""
    model, trainer = make()
    train(model, trainer, np.random.default_rng(7))
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.slow
def test_resume_is_bitwise_identical(tmp_path: Path, straight: dict[str, torch.Tensor]) -> None:
    model, trainer = make()
    rng = np.random.default_rng(7)
    while trainer.step_idx < EVERY:
        rows = rng.integers(0, ROWS, size=4)
        trainer.step(DATA[rows], LENGTHS[rows])
    checkpointer(tmp_path, model, trainer, Box(rng.bit_generator.state)).save(trainer.step_idx)
    torch.manual_seed(1234)  # whatever happens to the global RNG in between must not matter

    model, trainer, rng = resume(tmp_path)
    assert trainer.step_idx == EVERY
    train(model, trainer, rng)
    assert_same_weights(model, straight)

    model, trainer, rng = resume(tmp_path)  # control: the dropout RNG state is what makes it bitwise
    torch.manual_seed(1234)
    train(model, trainer, rng)
    assert not torch.equal(model.transformer.wte.weight, straight["transformer.wte.weight"])


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path, straight: dict[str, torch.Tensor]) -> None:
    stderr = open(tmp_path / "stderr.txt", "w+b")  # noqa: SIM115 - the child writes into it until killed
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, __file__, str(tmp_path / "ckpt")],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung child must not hang the test run
    watchdog.start()
    try:
        lines = []
        while not lines or not lines[-1].startswith("saving 8"):
            line = proc.stdout.readline()
            assert line, f"child exited early: {lines}\n{(tmp_path / 'stderr.txt').read_text()[-3000:]}"
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        proc.kill()
        stderr.close()
    assert lines[0].startswith("saved 4")
    ckpt = tmp_path / "ckpt"
    assert list(ckpt.glob(".tmp-step-8-*")), "the kill should have left a half-done step-8 temp dir"
    assert latest_checkpoint(ckpt) == ckpt / "step-4"

    model, trainer, rng = resume(ckpt)
    train(model, trainer, rng, ckpt_dir=ckpt)
    assert_same_weights(model, straight)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-12", "step-8"]  # keep=2, leftovers gone


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path) -> None:
    model, trainer = make()
    trainer.step(DATA[:4], LENGTHS[:4])
    path = checkpointer(tmp_path, model, trainer, Box({"cursor": 17, "q": [0.5, 1.0]})).save(1)
    files = sorted(p.name for p in path.iterdir())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    assert {"model.safetensors", "state.safetensors", "state.json", "config.json"} <= set(files)
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 1 and state["world_size"] == 1
    assert state["ranks"] == [{"box": {"value": {"cursor": 17, "q": [0.5, 1.0]}}}]
    assert state["parts"]["trainer"]["step_idx"] == 1 and set(state["parts"]) == {"trainer", "torch_rng"}
    reloaded = load_model(path)  # a checkpoint is also a plain model directory
    assert torch.equal(reloaded.transformer.wte.weight, model.transformer.wte.weight)


def test_keeps_the_last_two_and_resumes_from_the_newest(tmp_path: Path) -> None:
    model, trainer = make()
    for _ in range(3):
        trainer.step(DATA[:4], LENGTHS[:4])
        checkpointer(tmp_path, model, trainer, Box(trainer.step_idx)).save(trainer.step_idx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-3"
    model, trainer, value = resume_plain(tmp_path)
    assert trainer.step_idx == 3 and value == 3
    checkpointer(tmp_path, model, trainer, Box({"again": True})).save(3)  # the same step saved again replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3"]
    assert resume_plain(tmp_path)[2] == {"again": True}
    checkpointer(tmp_path, model, trainer, Box()).save(2)  # a run that resumed from step 2 overtakes step 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]


def resume_plain(ckpt_dir: Path) -> tuple[torch.nn.Module, Trainer, object]:
    model, trainer = make()
    box = Box()
    checkpointer(ckpt_dir, model, trainer, box).load()
    return model, trainer, box.value


def test_only_complete_step_directories_are_checkpoints(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path / "missing") is None
    model, trainer = make()
    trainer.step(DATA[:4], LENGTHS[:4])
    checkpointer(tmp_path, model, trainer, Box()).save(1)
    half = tmp_path / ".tmp-step-9-abc"  # a writer killed before its rename
    half.mkdir()
    (half / "state.json").write_text("{}")
    (tmp_path / "step-7").mkdir()  # no state file: not written by save_checkpoint
    (tmp_path / "step-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-1"
    trainer.step(DATA[:4], LENGTHS[:4])
    checkpointer(tmp_path, model, trainer, Box()).save(2)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2" and not half.exists()


def test_unserializable_parts_leave_nothing_behind(tmp_path: Path) -> None:
    model, trainer = make()
    with pytest.raises(TypeError, match="JSON-serializable"):
        Checkpointer(tmp_path, model, {"sampler": Box(object())}).save(1)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@pytest.mark.parametrize("damage", ["state.json", "state.safetensors", "model.safetensors"])
def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path: Path, damage: str) -> None:
    model, trainer = make()
    path = checkpointer(tmp_path, model, trainer, Box(1)).save(1)
    data = (path / damage).read_bytes()
    (path / damage).write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a bad copy
    with pytest.raises(ValueError, match=rf"{path} is damaged .*{damage}.*Fix: delete"):
        checkpointer(tmp_path, *make(), Box()).load()


def test_a_checkpoint_resumes_only_with_the_world_size_that_wrote_it(tmp_path: Path) -> None:
    model, trainer = make()
    ranks = [{"box": {"value": r}} for r in (0, 1)]
    save_checkpoint(tmp_path, 3, model, {"trainer": trainer.state_dict()}, ranks)
    with pytest.raises(ValueError, match="written by 2 process"):
        checkpointer(tmp_path, *make(), Box()).load()
    state = json.loads((tmp_path / "step-3" / "state.json").read_text())
    (tmp_path / "step-3" / "state.json").write_text(json.dumps(state | {"format": 1}))
    with pytest.raises(ValueError, match="format 1.*delete"):
        checkpointer(tmp_path, *make(), Box()).load()


def _child(ckpt_dir: Path) -> None:
    """The process the SIGKILL test kills; see the module docstring."""
    real_fsync_tree = checkpoint_module._fsync_tree

    def hang_at_step_8(root: Path) -> None:
        real_fsync_tree(root)
        if root.name.startswith(".tmp-step-8-"):
            print("saving 8", flush=True)
            sys.stdin.readline()  # blocks until the parent's SIGKILL

    model, trainer = make()
    with mock.patch.object(checkpoint_module, "_fsync_tree", hang_at_step_8):
        train(model, trainer, np.random.default_rng(7), Path(ckpt_dir), lambda s: print(f"saved {s}", flush=True))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
