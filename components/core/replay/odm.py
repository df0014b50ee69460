"""`odm`: Online Data Mixing (Albalak et al. 2023, arXiv:2312.02406), the closest published rival of amr.

An EXP3 bandit over the same arms as amr, rewarded by the replayed rows' own training loss, so it costs no
extra compute. At step t (1-based) with K arms:

    eps_t = min(1/K, sqrt(ln K / (K t)))
    p_t   = (1 - K eps_t) * softmax(eps_{t-1} * R) + eps_t
    R_a  <- s * R_a + (1 - s) * Rhat_a        for every arm a pulled in the step, where
    Rhat_a = (sum of the losses of a's replayed rows) / (n * p_a)

`s` is `replay.odm_smoothing` (ODM's alpha) and n the step's replayed rows. With one row a step Rhat_a is the
paper's importance-weighted loss L / p_a; with n rows it is the unbiased estimate of the mean loss of arm a
(its expected row count is n * p_a). p_a is taken at update time, as the paper's single-process loop does; with
prefetched batches it can lag the draw by a few steps, a small bias for both strategies alike.

Unlike amr it rewards raw loss (hard arms get more replay whether or not they were forgotten). The shared
Q/pulls statistics of `ReplaySampler` are kept as for every strategy; R is ODM's own and travels in the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from components.core.replay.base import ReplaySampler
from components.core.replay.strategies import softmax


def odm_epsilon(k: int, t: int) -> float:
    """EXP3's exploration rate eps_t = min(1/K, sqrt(ln K / (K t))) for t >= 1 (t < 1 counts as 1)."""
    t = max(t, 1)
    return min(1.0 / k, float(np.sqrt(np.log(k) / (k * t)))) if k > 1 else 1.0


class OnlineDataMixing(ReplaySampler):
    name = "odm"

    def __init__(self, cfg, arms, seed=None) -> None:
        super().__init__(cfg, arms, seed)
        self.reward = np.zeros(self.num_arms)  # ODM's smoothed importance-weighted loss R per arm

    def probabilities(self) -> np.ndarray:
        k = self.num_arms
        if not k:
            return np.zeros(0)
        t = self.step + 1  # the step about to be drawn
        eps, lr = odm_epsilon(k, t), odm_epsilon(k, t - 1)
        return (1.0 - k * eps) * softmax(lr * self.reward) + eps

    def update_from_stats(self, sums: np.ndarray, counts: np.ndarray) -> None:
        """The shared Q update, then R for the pulled arms from their raw losses (sums hold loss - reference)."""
        p = self.probabilities()  # the mix the step was drawn from (before this step counts)
        super().update_from_stats(sums, counts)
        counts = np.asarray(counts, dtype=np.float64)
        n = counts.sum()
        if n <= 0:
            return
        pulled = counts > 0
        loss_sum = np.asarray(sums, dtype=np.float64)[pulled] + counts[pulled] * self.reference[pulled]
        estimate = loss_sum / (n * p[pulled])
        s = self.cfg.odm_smoothing
        self.reward[pulled] = s * self.reward[pulled] + (1.0 - s) * estimate

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"reward": self.reward.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """As `ReplaySampler.load_state_dict`; an arm new to the state starts at the mean R of the known ones."""
        super().load_state_dict(state)
        saved = {k: i for i, k in enumerate(state["keys"])}
        old = np.asarray(state.get("reward", np.zeros(len(saved))), dtype=np.float64)
        known = [(i, saved[k]) for i, k in enumerate(self.arms.keys) if k in saved]
        self.reward = np.full(self.num_arms, old[[j for _, j in known]].mean() if known else 0.0)
        for i, j in known:
            self.reward[i] = old[j]
