"""Training stage: model construction (model), the LR schedule (schedule), the optimizer step (trainer), the rank and
device of this process (ranks), what each step reads (planner, prefetch), resumable checkpoints (checkpoint), the
loop over one drop (loop) and the torchrun launcher (launcher).

Modules import only downward in that list's reverse order (the contract in pyproject.toml checks it); nothing here
imports the refresh steps or the entry points.
"""

from components.training.checkpoint import Checkpointer, latest_checkpoint, load_checkpoint, save_checkpoint
from components.training.model import build_model, load_model, save_model
from components.training.ranks import Dist, resolve_device
from components.training.schedule import get_lr
from components.training.trainer import Trainer, per_sample_loss

__all__ = [
    "Checkpointer",
    "Dist",
    "Trainer",
    "build_model",
    "get_lr",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "per_sample_loss",
    "resolve_device",
    "save_checkpoint",
    "save_model",
]
