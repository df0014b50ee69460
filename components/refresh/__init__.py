"""Refresh steps: one drop's run, training, evaluation, registration and gate (steps), the forgetting benchmark
(bench) and the DVC stage outputs (report). Called by the entry points (flows/, components/cli/)."""
