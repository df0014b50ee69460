"""`amr export`: a registered model version as a plain Hugging Face directory (weights, config, tokenizer)."""

from __future__ import annotations

from pathlib import Path

import typer

from components.cli.base import app, exits_on, out, settings


@app.command()
def export(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ..., help="New (or empty) directory to write; an existing non-empty one is refused."
    ),
    alias: str | None = typer.Option(None, "--alias", help="Export the version behind this alias (e.g. champion)."),
    version: int | None = typer.Option(None, "--version", help="Export this version number."),
) -> None:
    """Write a registered model version (mlflow.registered_model) as a directory that
    `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load; written atomically."""
    from components.adapters.registry import RegistryError, export_version

    cfg = settings(ctx)
    with exits_on(RegistryError):
        dst = export_version(cfg, directory, alias=alias, version=version)
    files = ", ".join(sorted(p.name for p in dst.iterdir()))
    what = f"@{alias}" if alias is not None else f"version {version}"
    out.print(f"exported {cfg.mlflow.registered_model} {what} to {dst}: {files}", highlight=False)
