"""Training core: model construction, LR schedule, the optimizer step and resumable checkpoints.

Everything here works on plain token arrays; where the batches come from (new drop + replay) is the
caller's business, so the trainer can be driven by a flow, the CLI, a benchmark or a test alike.
"""

from components.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from components.training.model import build_model, load_model, save_model
from components.training.schedule import get_lr
from components.training.trainer import Trainer, per_sample_loss, resolve_device

__all__ = [
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
