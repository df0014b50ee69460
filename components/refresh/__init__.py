"""Refresh steps: one drop's run, training, evaluation, registration (steps) and gate (gating, re-exported by
steps), the forgetting benchmark (bench) and the DVC stage outputs (report). Called by the entry points (flows/,
components/cli/)."""
