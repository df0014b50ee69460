"""Where the log lines of a refresh go: Prefect's and MLflow's INFO lines to a file, the pipeline's to the terminal.

A refresh from the terminal (`amr refresh`, `amr demo`) printed some forty lines of library bookkeeping ("Beginning
flow run", "Finished in state Completed()" for every task, MLflow's "Creating initial MLflow database tables",
"View run ... at") between the lines a person reads. `library_logs_to` keeps the loggers as Prefect and MLflow
configure them and changes only where records end up:

* a file handler at INFO on the root logger and on `mlflow` (which does not propagate) gets every record: the
  complete log, with logger names, under $AMR_HOME/logs/;
* the terminal handlers they installed (Prefect's console handler on the root logger, MLflow's stream handler)
  get a filter that passes warnings and errors from anywhere, and INFO only from this project's own code: the
  flow's `get_run_logger()` lines ("ingest ingested 01-...", "... PROMOTED to champion") are the pipeline's
  progress, and Prefect's flow-run logger carries them and its own engine lines alike, so the filter goes by the
  file that logged the record, not by the logger's name.

Prefect's API log handler is left alone, so the flow run's logs in the Prefect UI are as complete as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import components
import flows

OURS = tuple(str(Path(p).resolve()) for p in (*components.__path__, *flows.__path__))
FORMAT = "%(asctime)s %(levelname)-7s %(name)s - %(message)s"
RUN_FORMAT = "%%(asctime)s %%(levelname)-7s %s run %%(%s_run_name)r - %%(message)s"


class LibraryLog(logging.FileHandler):
    """The file handler `library_logs_to` adds (its class tells it from anyone else's on a second call)."""


def refresh_log(home: Path) -> Path:
    return home / "logs" / "refresh.log"


def terminal_filter(record: logging.LogRecord) -> bool:
    """What the terminal shows: warnings and errors, and INFO that this project's own code logged."""
    return record.levelno >= logging.WARNING or record.pathname.startswith(OURS)


def library_logs_to(path: Path) -> Path:
    """Send library INFO lines to `path` (appended) instead of the terminal; returns `path`. Idempotent.

    Imports Prefect and MLflow first: each configures its loggers on import (Prefect in prefect.main, which
    `import prefect` alone does not load), which would undo changes made before.
    """
    import mlflow  # noqa: F401
    import prefect.main  # noqa: F401
    from prefect.logging.formatters import PrefectFormatter  # names the flow or task run of its records

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LibraryLog(path, encoding="utf-8")
    handler.setFormatter(
        PrefectFormatter(FORMAT, flow_run_fmt=RUN_FORMAT % ("Flow", "flow"), task_run_fmt=RUN_FORMAT % ("Task", "task"))
    )
    handler.setLevel(logging.INFO)
    for logger in (logging.getLogger(), logging.getLogger("mlflow")):
        for old in [h for h in logger.handlers if isinstance(h, LibraryLog)]:
            logger.removeHandler(old)
            old.close()
        for terminal in logger.handlers:
            if terminal_filter not in terminal.filters:
                terminal.addFilter(terminal_filter)
        logger.addHandler(handler)
    return path
