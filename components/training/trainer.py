"""One optimizer step on a padded token batch, returning the per-sample losses the replay sampler needs.

The adaptive sampler's signal is each replayed sequence's own loss, taken from the training forward
pass at no extra cost. So the trainer computes token losses itself from the logits (one forward,
`cross_entropy(reduction="none")`), averages them per row for the sampler and over all real tokens of
the batch for the backward pass.

Under torchrun the model is wrapped in DDP and each rank steps on its share of the global batch; the loss is
scaled so that DDP's average over ranks gives the mean over every real token of the global batch, and gradient
accumulation skips DDP's all-reduce (`no_sync`) on all but the last micro-batch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from components.core.config import TrainConfig
from components.training.ranks import Dist, resolve_device
from components.training.schedule import get_lr

IGNORE = -100  # label of padding positions, as in Hugging Face


def configure_torch(device: torch.device) -> None:
    """Make CPU runs reproducible and sized to the cores this process may actually use.

    Deterministic kernels cost nothing measurable on CPU; on CUDA they would need a cuBLAS workspace
    setting and slower kernels, so GPU runs are reproducible only up to atomics. The thread count is
    capped at the CPU affinity (containers often report the host's cores), which also keeps a resumed
    run on the same reduction order as the run it continues.
    """
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimizer stay fp32); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pinned(tokens: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Host batch widened to int64 in page-locked memory (the prefetcher's job), so the GPU copy is asynchronous."""
    return torch.as_tensor(tokens).long().pin_memory(), torch.as_tensor(lengths).long().pin_memory()


def _host_tensors(tokens, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.as_tensor(tokens).long()  # embeddings index with int64; int32 from the memory is widened here
    lengths = torch.as_tensor(lengths).long()
    if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
        raise ValueError(f"expected tokens [B, L] and lengths [B], got {list(tokens.shape)} and {list(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > tokens.shape[1]).any()):
        raise ValueError(f"lengths must lie in [0, {tokens.shape[1]}], got {lengths.tolist()}")
    return tokens, lengths


def _as_tensors(tokens, lengths, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, lengths = _host_tensors(tokens, lengths)
    return tokens.to(device, non_blocking=True), lengths.to(device, non_blocking=True)


def _row_losses(model: PreTrainedModel, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Summed next-token loss and number of predicted tokens per row; positions >= length are padding."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    mask = positions[None, :] < lengths[:, None]
    logits = model(input_ids=tokens, attention_mask=mask.long()).logits
    targets = tokens[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
    losses = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=IGNORE
    ).view(targets.shape)
    return losses.sum(dim=1), (targets != IGNORE).sum(dim=1)


def _mean_per_row(sums: torch.Tensor, counts: torch.Tensor) -> np.ndarray:
    """Per-row mean in float64; a row with fewer than two real tokens predicts nothing and gets NaN."""
    sums, counts = sums.double().cpu().numpy(), counts.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Activation (gradient) checkpointing: each decoder layer keeps only its input and recomputes its activations
    in the backward pass. Non-reentrant (`use_reentrant=False`, what PyTorch recommends): it works with inputs that
    need no gradient, keeps the RNG state of the forward (dropout recomputes identically), and composes with DDP's
    `no_sync`. transformers 5 names it `activation_checkpointing_enable` (`gradient_checkpointing_enable` is its
    deprecated alias); it switches the KV cache off, which training never uses."""
    if not model.supports_gradient_checkpointing:
        raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support it; set it false")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


class Trainer:
    """AdamW over a causal LM with the per-refresh warm-up + cosine schedule; resumable via `state_dict()`."""

    def __init__(
        self,
        model: PreTrainedModel,
        cfg: TrainConfig,
        total_steps: int,
        device: str | torch.device | None = None,
        dist: Dist | None = None,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.cfg = cfg
        self.total_steps = total_steps
        self.dist = dist if dist is not None else Dist.single(device if device is not None else cfg.device)
        self.device = self.dist.device
        configure_torch(self.device)
        self.model = model.to(self.device)  # the plain module: what checkpoints and commits save
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.model)
        self.forward_module = self.dist.wrap(self.model)  # under DDP it syncs gradients in its backward
        self.optimizer = self._build_optimizer()
        self.step_idx = 0
        self.last_stats: dict[str, float] = {}

    def _build_optimizer(self) -> torch.optim.AdamW:
        """Decay matrices and embeddings only: decaying biases and norm gains just fights the data."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = True if self.device.type == "cuda" else None
        # beta2 = 0.95 as in GPT-3 / nanoGPT: steadier than 0.999 on the short, bursty runs of one refresh
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.95), fused=fused)

    def lr_at(self, step: int) -> float:
        """The schedule's rate at `step`: peak `train.pretrained_lr` for a pretrained line, else `train.lr`."""
        peak = self.cfg.peak_lr
        return get_lr(step, self.total_steps, peak, self.cfg.warmup_steps, peak * self.cfg.min_lr_ratio)

    def _micro_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        # row indices made on the device: a host-made index would cost a blocking copy per micro-batch on CUDA
        for idx in torch.tensor_split(torch.arange(batch_size, device=self.device), self.cfg.grad_accum):
            if len(idx):
                yield idx

    def step(self, tokens: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> np.ndarray:
        """One optimizer step on `tokens` [B, L]; returns each row's mean token loss [B] (float64, NaN if empty).

        The backward loss is the mean over all real tokens of the whole batch; each micro-batch
        contributes its token-loss sum divided by the batch's token count, so gradient accumulation
        yields the same gradient as one big batch.
        """
        start = time.perf_counter()
        tokens, lengths = _host_tensors(tokens, lengths)
        n_tokens = int((lengths - 1).clamp(min=0).sum())  # counted on the host: no GPU sync
        n_tokens = int(self.dist.all_reduce_sum(n_tokens)[0])  # the global batch's tokens
        if n_tokens == 0:
            raise ValueError("the batch has no token to predict (every row is shorter than 2 tokens)")
        tokens, lengths = tokens.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)
        self.model.train()
        lr = self.lr_at(self.step_idx)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(len(tokens), device=self.device)
        counts = torch.zeros(len(tokens), dtype=torch.long, device=self.device)
        micro = list(self._micro_batches(len(tokens)))
        world = self.dist.world_size
        for i, idx in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last or world == 1 else self.forward_module.no_sync():
                with autocast(self.device):
                    row_sum, row_count = _row_losses(self.forward_module, tokens[idx], lengths[idx])
                loss = row_sum.sum() / n_tokens
                # DDP averages the gradients over ranks; scaling by the world size turns that into the sum
                (loss * world if world > 1 else loss).backward()
            sums[idx], counts[idx] = row_sum.detach(), row_count
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_idx += 1
        losses = _mean_per_row(sums, counts)  # copies to the host, so the timing below includes the GPU work
        total = float(self.dist.all_reduce_sum(sums.sum().item())[0])
        elapsed = time.perf_counter() - start
        self.last_stats = {
            "lr": lr,
            "grad_norm": float(grad_norm),
            "loss": float(total / n_tokens),
            "tokens": float(n_tokens),
            "tokens_per_s": n_tokens / elapsed if elapsed > 0 else float("inf"),
        }
        return losses

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step_idx": self.step_idx}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_idx = int(state["step_idx"])


# Evaluation holds one forward's logits at once: at most 4096 tokens x a 49,152-token vocabulary (805 MB as float32),
# so evaluate.batch_size = 32 of 4096-token rows with a real vocabulary runs one row per forward instead of 26 GB.
LOGITS_PER_FORWARD = 4096 * 49_152


@torch.no_grad()
def per_sample_loss(
    model: PreTrainedModel,
    tokens: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray,
    device: str | torch.device | None,
    batch_size: int,
) -> np.ndarray:
    """Each row's mean next-token loss (nats/token, float64) in eval mode; the same definition as `Trainer.step`.

    The model is moved to `device` (a no-op when it is already there) and gets its train/eval mode back. Rows go
    `batch_size` per forward, fewer when their logits would pass `LOGITS_PER_FORWARD` elements.
    """
    device = resolve_device(device)
    model.to(device)
    tokens, lengths = _as_tensors(tokens, lengths, device)
    was_training = model.training
    model.eval()
    try:
        out = []
        vocab = model.get_output_embeddings().out_features if model.get_output_embeddings() else 1
        per_forward = max(1, min(batch_size, LOGITS_PER_FORWARD // max(1, tokens.shape[-1] * vocab)))
        for rows in torch.arange(len(tokens), device=device).split(per_forward):
            with autocast(device):
                sums, counts = _row_losses(model, tokens[rows], lengths[rows])
            out.append(_mean_per_row(sums, counts))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)
