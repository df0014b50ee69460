"""Batches fetched ahead of the trainer: plans are made `depth` steps ahead and read from LanceDB in a thread.

The trainer thus never waits on the store. The bandit sees its feedback with that delay: the plan for step t+d is
drawn from probabilities updated through step t-1 (a plan is drawn when the batch `depth` steps before it is taken).
The pending plans are the prefetcher's state, so a resumed run reads exactly the same batches. On CUDA the fetch
also widens and pins the batch (`components.training.trainer.pinned`), so the copy to the GPU is asynchronous.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from components.training.planner import BatchPlanner, Plan

Fetch = Callable[[np.ndarray], tuple[Any, Any]]  # row ids -> (tokens, lengths)


class Prefetcher:
    """Keeps up to `depth` planned batches in flight; iterate `batches(start)` inside `with prefetcher:`."""

    def __init__(self, planner: BatchPlanner, fetch: Fetch, depth: int, total_steps: int) -> None:
        self.planner, self.fetch, self.depth, self.total = planner, fetch, max(1, depth), total_steps
        self._queue: deque[tuple[Plan, Future]] = deque()
        self._restored: list[Plan] = []
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Prefetcher:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amr-prefetch")
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def _submit(self, plan: Plan) -> None:
        self._queue.append((plan, self._pool.submit(self.fetch, plan.row_ids)))

    def batches(self, start: int) -> Iterator[tuple[Plan, Any, Any, float]]:
        """(plan, tokens, lengths, seconds waited on the fetch) for every step from `start` to the budget's end."""
        for plan in self._restored:  # planned before the checkpoint this run resumed from
            self._submit(plan)
        self._restored = []
        next_step = start + len(self._queue)
        while len(self._queue) < self.depth and next_step < self.total:
            self._submit(self.planner.plan(next_step))
            next_step += 1
        while self._queue:
            plan, future = self._queue.popleft()
            if next_step < self.total:
                self._submit(self.planner.plan(next_step))
                next_step += 1
            wait = time.perf_counter()
            tokens, lengths = future.result()
            yield plan, tokens, lengths, time.perf_counter() - wait

    def state_dict(self) -> dict[str, Any]:
        """The plans drawn but not trained yet."""
        return {"pending": [plan.to_dict() for plan, _ in self._queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = [Plan.from_dict(p) for p in state["pending"]]
