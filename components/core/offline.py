"""Environment defaults that keep amr offline: models and tokenizers load from local directories only, and no
library phones home (Prefect server analytics, MLflow and DVC telemetry). Set before those libraries are used;
a value the user exported wins.

One more default is about robustness, not privacy: with no PREFECT_API_URL, `amr refresh` starts Prefect's
temporary API server, and Prefect gives it 20 s to answer. A loaded machine (a training run beside it, two cores
importing torch) misses that and the refresh dies before its first task, so amr waits two minutes; a healthy server
answers in 3-5 s, so the wait costs nothing when all is well.
"""

from __future__ import annotations

import os

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
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
