"""Four replay strategies behind one interface: none, uniform, balanced and amr (odm: components.core.replay.odm).

The baselines differ from amr only in `probabilities()`; all of them draw a row uniformly inside the chosen
arm, so the benchmark compares how the replay slots are spread, at equal compute.
"""

from __future__ import annotations

import numpy as np

from components.core.replay.base import ReplaySampler, _empty


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax: shifting by the max keeps exp() from overflowing at small temperatures."""
    z = np.exp(x - np.max(x))
    return z / z.sum()


class NoReplay(ReplaySampler):
    """Plain fine-tuning: no replay slot is ever filled, so the loop fills the whole batch with new data.

    `probabilities()` is all zeros: no arm receives any replay mass (the one strategy whose vector does not
    sum to 1). The RNG is never advanced.
    """

    name = "none"

    @property
    def replays(self) -> bool:
        return False

    def probabilities(self) -> np.ndarray:
        return np.zeros(self.num_arms)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n < 0:
            raise ValueError(f"cannot sample a negative number of rows ({n})")
        return _empty()


class UniformReplay(ReplaySampler):
    """Uniform over every past train sequence: an arm with probability size/N, then a row inside it.

    The two-step draw gives each row exactly 1/N, and reports the arm mix that a flat draw implies.
    """

    name = "uniform"

    def probabilities(self) -> np.ndarray:
        return self.sizes / self.sizes.sum() if self.num_arms else np.zeros(0)


class BalancedReplay(ReplaySampler):
    """Uniform over past drops, then uniform over the drop's sequences, whatever the drop sizes.

    Arm a of drop d gets (1/D) * size_a / size_d, so a row of drop d is drawn with probability 1/(D * size_d).
    """

    name = "balanced"

    def probabilities(self) -> np.ndarray:
        if not self.num_arms:
            return np.zeros(0)
        _, drop_of = np.unique(np.array(self.arms.drop_ids, dtype=object), return_inverse=True)
        drop_size = np.bincount(drop_of, weights=self.sizes)
        return self.sizes / drop_size[drop_of] / len(drop_size)


class AdaptiveReplay(ReplaySampler):
    """Adaptive memory replay: a Boltzmann bandit over arms, rewarded by their current forgetting.

    Q_a tracks mean(loss - ref_a) of the arm's replayed rows (see `update_from_stats`). An arm not pulled
    for s steps gets bonus * min(s, stale_steps) on top, so a stale low estimate gets re-checked. Then
        p = (1 - eps) * softmax((Q + b) / tau) + eps / K,
    so every arm keeps at least eps/K of the slots however confident the estimate. With `uniform_floor` f > 0
    the result is mixed with uniform replay's arm mix u (size_a / N):
        p' = (1 - f) * p + f * u,
    so no arm gets less than f times what uniform replay would give it (f = 1 is uniform replay).

    Q is forgetting against the arm's reference (`replay.reference`): `best`, the arm's lowest probe loss at
    any evaluation so far, or `last`, the latest evaluation's. With `last`, Q measures forgetting since the last
    refresh, so the bandit chases the drop trained last and lets older drops slide (see README, Replay
    defaults and the evidence).
    """

    name = "amr"

    def exploration_bonus(self) -> np.ndarray:
        idle = np.minimum(self.step - self.last_pull, self.cfg.stale_steps)
        return self.cfg.exploration_bonus * idle.astype(np.float64)

    def probabilities(self) -> np.ndarray:
        k = self.num_arms
        if not k:
            return np.zeros(0)
        boltzmann = softmax((self.q + self.exploration_bonus()) / self.cfg.temperature)
        p = (1.0 - self.cfg.epsilon) * boltzmann + self.cfg.epsilon / k
        floor = self.cfg.uniform_floor
        return (1.0 - floor) * p + floor * self.sizes / self.sizes.sum() if floor else p
