"""The `amr` command line. Every command is a thin shell over a components/ function.

Exit codes: 0 success; 1 failure (bad configuration, unreachable store, crash); 2 bad data (a drop rejected or
refused, a gate that said no where that is asked to fail).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from components.config import ConfigError, Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Continual pre-training with adaptive memory replay."
)
memory_app = typer.Typer(help="Inspect the LanceDB memory.", invoke_without_command=True)
app.add_typer(memory_app, name="memory")
out = Console()
err = Console(stderr=True)


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


@app.command()
def ingest(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Drops root: a directory or s3://bucket/prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON, no progress bars."),
) -> None:
    """Ingest every ready drop of SOURCE into the memory (idempotent; bad drops are quarantined)."""
    from components.ingest import exit_code, ingest_source

    cfg = settings(ctx)
    try:
        results = ingest_source(cfg, source, show_progress=not as_json and err.is_terminal)
    except Exception as exc:
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    code = exit_code(results)
    if as_json:
        print(json.dumps({"results": [r.to_dict() for r in results], "exit_code": code}, indent=2))
    else:
        colors = {"ingested": "green", "present": "cyan", "pending": "yellow"}
        for r in results:
            color = colors.get(r.status, "red")
            out.print(f"[{color}]{r.status:>9}[/{color}] {r.drop_id}: {r.message}", highlight=False)
        if not results:
            out.print(f"no drops under {source}")
    raise typer.Exit(code)


def memory_json(cfg: Settings, source: str | None) -> dict:
    from components.memory import Memory

    memory = Memory.open(cfg)
    drops = [
        {k: getattr(r, k) for k in ("drop_id", "status", "documents", "sequences", "holdout_sequences", "tokens")}
        | {"clusters": r.clusters, "version": r.version, "error": r.error or None}
        for r in memory.drops()
    ]
    if source:
        from components.drops import open_source

        known = {d["drop_id"] for d in drops}
        blank = {"documents": 0, "sequences": 0, "holdout_sequences": 0, "tokens": 0, "clusters": 0, "version": None}
        for ref in open_source(source, cfg.s3).list_drops():
            if ref.drop_id not in known:  # ready or not, it is not in the memory yet
                drops.append({"drop_id": ref.drop_id, "status": "pending", **blank, "error": None})
    return {"version": memory.version, "drops": drops}


@memory_app.callback()
def memory(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    source: str | None = typer.Option(None, "--source", help="Also list this source's drops not ingested yet."),
) -> None:
    """Show the memory version and every drop."""
    if ctx.invoked_subcommand:
        return
    data = memory_json(settings(ctx), source)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"memory version {data['version']}")
    for col in ("drop", "status", "docs", "train seqs", "holdout", "tokens", "clusters", "version", "error"):
        table.add_column(col)
    for d in data["drops"]:
        table.add_row(
            d["drop_id"],
            d["status"],
            str(d["documents"]),
            str(d["sequences"]),
            str(d["holdout_sequences"]),
            str(d["tokens"]),
            str(d["clusters"]),
            str(d["version"] or "-"),
            (d["error"] or "")[:200],
        )
    out.print(table)


@memory_app.command("versions")
def memory_versions(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the memory's LanceDB versions and their tags."""
    from components.memory import Memory

    versions = Memory.open(settings(ctx)).versions()
    if as_json:
        print(json.dumps(versions, indent=2))
        return
    table = Table(title="memory versions (drop commits are complete memory versions)")
    for col in ("version", "timestamp", "rows", "tags", "drop commit"):
        table.add_column(col)
    for v in versions:
        table.add_row(str(v["version"]), v["timestamp"], str(v["rows"]), ", ".join(v["tags"]), "yes" * v["drop_commit"])
    out.print(table)


@app.command()
def demo(
    ctx: typer.Context,
    drops_dir: Path = typer.Option(Path("demo-drops"), help="Where to build the demo drops."),
) -> None:
    """Build demo drops from real text on this machine and run the pipeline on them."""
    from components.demo import run_demo

    cfg = settings(ctx)
    sys.exit(run_demo(cfg, drops_dir, out))


if __name__ == "__main__":
    app()
