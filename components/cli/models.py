"""`amr model import`: a local Hugging Face directory or a GGUF file into `$AMR_HOME/models/NAME`."""

from __future__ import annotations

from pathlib import Path

import typer

from components.cli.base import app, err, exits_on, out
from components.core.config import ConfigError, load_settings

model_app = typer.Typer(help="Pretrained models that train.model and ingest.tokenizer can name.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("import")
def import_(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="A local model directory (safetensors) or a .gguf file."),
    name: str | None = typer.Option(None, "--name", help="Name under $AMR_HOME/models (default: from SOURCE)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an imported model of the same name."),
) -> None:
    """Import SOURCE as a plain HF directory; then set train.model / ingest.tokenizer to its NAME."""
    from components.adapters.modelfiles import import_model

    try:  # the names are not resolved: params.yaml may already name the model this command creates
        cfg = load_settings(ctx.find_root().obj, resolve_names=False)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    with exits_on(ValueError):
        result = import_model(source, cfg.home, name, replace=replace)
    out.print(
        f"imported {result.name} ({result.kind}, {result.parameters / 1e6:.1f}M parameters, vocabulary "
        f"{result.vocab_size}) to {result.path}\nuse it: train.model: {result.name} and ingest.tokenizer: "
        f"{result.name}",
        highlight=False,
    )
