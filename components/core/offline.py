"""Environment defaults that keep amr offline: models and tokenizers load from local directories only, and no
library phones home (Prefect server analytics, MLflow and DVC telemetry). Set before those libraries are used;
a value the user exported wins.

One more default is about robustness, not privacy: with no PREFECT_API_URL, `amr refresh` starts Prefect's
temporary API server, and Prefect gives it 20 s to answer. A loaded machine (a training run beside it, two cores
importing torch) misses that and the refresh dies before its first task, so amr waits two minutes; a healthy server
answers in 3-5 s, so the wait costs nothing when all is well.

Prefect 3.8 reads its settings from the environment once, when `prefect` is imported (`prefect.context` builds
`GLOBAL_SETTINGS_CONTEXT` then; `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()` and the lazy start of
the temporary server read that cached object). So every entry point calls `apply()` (the CLI in cli/base.py, the
flows in flows/__init__.py) and, where Prefect was imported first, `apply()` has Prefect rebuild that context
(`prefect.context.refresh_global_settings_context`) so the defaults it just set reach it. Found through
`sys.modules`, never imported here: this module must not load Prefect. A `temporary_settings` block (Prefect's
test harness) keeps its own settings, as it should.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply() -> None:
    """Set every default the user has not set; if Prefect is already imported, make it read them."""
    added = [key for key in DEFAULTS if key not in os.environ]
    for key in added:
        os.environ[key] = DEFAULTS[key]
    context = sys.modules.get("prefect.context")
    refresh = getattr(context, "refresh_global_settings_context", None)
    if refresh is not None and any(key.startswith("PREFECT_") for key in added):
        refresh()
