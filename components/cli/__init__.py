"""The `amr` command line. Every command is a thin shell over a components/ function.

Exit codes: 0 success; 1 failure (bad configuration, unreachable store, crash); 2 bad data (a drop rejected or
refused); 3 busy (another refresh holds the memory).
"""

from components.cli import data, models, orchestration, training, versioning  # noqa: F401  (they register the commands)
from components.cli.base import app

__all__ = ["app"]
