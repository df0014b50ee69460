"""Prefect flows: refresh and ingest. Importing the package applies amr's environment defaults (offline models,
no telemetry, the temporary Prefect server's 120 s start-up limit; components/core/offline.py), so a flow run
from Python, `prefect deploy` or a worker gets them too, even where Prefect was imported first."""

from components.core import offline

offline.apply()
