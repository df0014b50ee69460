"""Replay samplers: which past sequences fill the replay slots of each training batch.

Usage by the training loop (components.training.planner; under DDP all-reduce `arm_stats` before
`update_from_stats`, and give each rank its own stream with `seed=cfg.seed + rank`):

    arms = build_arms(index, past_drops, cfg.arms)
    sampler = build_sampler(cfg, arms)
    sampler.set_reference(line_state.reference(cfg.reference))  # train-probe loss per arm: best-ever or last
    rows, arm = sampler.sample(n_replay)            # fetch `rows` from LanceDB by row id
    sampler.update(arm, per_sample_losses)          # after the forward pass
"""

from __future__ import annotations

from components.core.config import ReplayConfig
from components.core.replay.base import Arms, ReplaySampler, RowRange, build_arms
from components.core.replay.odm import OnlineDataMixing
from components.core.replay.strategies import AdaptiveReplay, BalancedReplay, NoReplay, UniformReplay, softmax

REGISTRY: dict[str, type[ReplaySampler]] = {
    cls.name: cls for cls in (NoReplay, UniformReplay, BalancedReplay, AdaptiveReplay, OnlineDataMixing)
}


def build_sampler(cfg: ReplayConfig, arms: Arms, seed: int | None = None) -> ReplaySampler:
    """The sampler named by `cfg.strategy`, over `arms`; `seed` defaults to `cfg.seed`."""
    try:
        cls = REGISTRY[cfg.strategy]
    except KeyError:
        raise ValueError(f"unknown replay strategy {cfg.strategy!r}; choose one of {sorted(REGISTRY)}") from None
    return cls(cfg, arms, seed=seed)


__all__ = [
    "REGISTRY",
    "AdaptiveReplay",
    "Arms",
    "BalancedReplay",
    "NoReplay",
    "OnlineDataMixing",
    "ReplaySampler",
    "RowRange",
    "UniformReplay",
    "build_arms",
    "build_sampler",
    "softmax",
]
