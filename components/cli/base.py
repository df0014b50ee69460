"""The `amr` app, its shared options and consoles; the commands live in the sibling modules.

Each command imports the stage it runs inside its function, so `amr --help` and a bad option answer without
loading torch, LanceDB or MLflow.

Exit codes: 0 success; 1 failure (bad configuration, unreachable store, crash); 2 bad data (a drop rejected or
refused, a gate that said no where that is asked to fail).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from components.adapters.locks import RefreshBusy
from components.core import offline
from components.core.config import ConfigError, Settings, load_settings

offline.apply()

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Continual pre-training with adaptive memory replay."
)
memory_app = typer.Typer(help="Inspect the LanceDB memory.", invoke_without_command=True)
app.add_typer(memory_app, name="memory")
out = Console()
err = Console(stderr=True)


@contextmanager
def exits_on(*errors: type[Exception], with_type: bool = False) -> Iterator[None]:
    """Expected failures become one line on stderr and an exit code: 3 for a busy refresh lock, else 1."""
    try:
        yield
    except typer.Exit:
        raise
    except RefreshBusy as exc:
        err.print(f"[yellow]busy:[/yellow] {exc}", highlight=False)
        raise typer.Exit(3) from None
    except errors as exc:
        err.print(f"[red]error:[/red] {f'{type(exc).__name__}: ' if with_type else ''}{exc}", highlight=False)
        raise typer.Exit(1) from None


def open_line(cfg: Settings, name: str):
    """The model line `name`; a bad name or a corrupted state file exits 1 with the file, the field and the fix."""
    from components.adapters.lines import Line

    with exits_on(ValueError):  # LineStateError is a ValueError
        return Line(cfg.home, name)


def settings(ctx: typer.Context, **overrides) -> Settings:
    try:
        return load_settings(ctx.find_root().obj, **overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@app.callback()
def main(
    ctx: typer.Context,
    params: Path | None = typer.Option(None, "--params", help="Params file (default ./params.yaml).", dir_okay=False),
) -> None:
    ctx.obj = params


bench_app = typer.Typer(help="Benchmarks built into the CLI.")
app.add_typer(bench_app, name="bench")
