"""Learning-rate schedule: linear warm-up, then cosine decay, restarted at every refresh.

Continual pre-training re-warms and re-decays the learning rate on each new drop (Ibrahim et al.,
"Simple and Scalable Strategies to Continually Pre-train Large Language Models", 2024): a model that
finished the previous refresh at `min_lr` cannot absorb a new distribution without raising the rate
again, and decaying once more at the end recovers the loss that a constant rate would leave on the
table. The caller simply starts `step` at 0 for every refresh.
"""

from __future__ import annotations

import math


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """Warm-up actually used: at most half the run, so a short refresh still spends time decaying."""
    return min(warmup_steps, total_steps // 2)


def get_lr(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr: float) -> float:
    """Learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps.

    - Warm-up, steps `0 .. w-1`: `lr * (step + 1) / (w + 1)`, rising linearly from about zero (never
      exactly zero: a step at lr 0 would be wasted compute), where `w = min(warmup_steps, total_steps // 2)`.
    - Step `w` is the peak, exactly `lr`.
    - Cosine decay from `lr` at step `w` to exactly `min_lr` at the last step, `total_steps - 1`,
      so the final weights are the ones trained at the floor. Steps past the end stay at `min_lr`.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
    warmup = effective_warmup(warmup_steps, total_steps)
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    decay_steps = total_steps - 1 - warmup
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
