"""`amr refresh`, `amr serve`, `amr promote`, `amr rollback-model` and `amr demo`: the Prefect flow and the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from components.cli.base import app, exits_on, open_line, out, settings
from components.cli.training import print_eval

if TYPE_CHECKING:
    from components.refresh.steps import DropReport


def _print_reports(reports: list[DropReport]) -> None:
    table = Table(title="refresh: gate decisions")
    for col in ("drop", "model version", "decision", "avg forgetting", "max forgetting", "new-drop loss", "steps"):
        table.add_column(col)
    for r in reports:
        table.add_row(
            r.drop_id,
            r.version,
            "[green]champion[/green]" if r.promote else "[red]rejected[/red]",
            *(_number(v) for v in (r.forgetting_avg, r.forgetting_max, r.plasticity)),
            str(r.steps),
        )
    out.print(table)
    for r in reports:
        if r.vs_base:  # a pretrained line: each drop's loss against the base model's
            cells = "  ".join(f"{d} {'-' if v is None else f'{v:+.2%}'}" for d, v in r.vs_base.items())
            out.print(f"{r.drop_id} vs base: {cells}", highlight=False)
    for r in reports:
        failed = [x for x in r.reasons if x.startswith(("fail", "reject"))]
        if failed:
            out.print(f"[red]{r.drop_id}[/red]: " + "; ".join(failed), highlight=False)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _run_refresh(
    ctx: typer.Context, source: str, force: bool, line: str, strategy: str | None, wait: float
) -> list[DropReport]:
    """The refresh flow, with Prefect's and MLflow's INFO lines in $AMR_HOME/logs/refresh.log (components/cli/logs)
    and, without PREFECT_API_URL, a temporary Prefect server that dies with this process (components/cli/ephemeral)."""
    from components.adapters.locks import refresh_lock
    from components.adapters.registry.tracking import RegistryError
    from components.cli.ephemeral import ServerStartError, temporary_server
    from components.cli.logs import library_logs_to, refresh_log
    from components.core.text import TokenizerMismatch
    from flows.refresh import refresh as refresh_flow

    cfg = settings(ctx)
    open_line(cfg, line)  # fail fast on a bad configuration or a corrupted line state: nothing is run
    if not wait:  # a busy home exits 3 now, not after Prefect's server started (the flow takes the lock for real)
        with exits_on(), refresh_lock(cfg.home):
            pass
    log = library_logs_to(refresh_log(cfg.home))
    out.print(f"[dim]Prefect's and MLflow's log lines go to {log}[/dim]", highlight=False)
    params = ctx.find_root().obj
    with exits_on(ServerStartError, RegistryError, TokenizerMismatch), temporary_server():  # busy: 3, else 1
        return refresh_flow(
            source=source,
            params=str(params) if params else None,
            force=force,
            line=line,
            strategy=strategy,
            wait_seconds=wait,
        )


@app.command()
def refresh(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Drops root: a directory or s3://bucket/prefix."),
    force: bool = typer.Option(False, "--force", help="With no new drop, redo the last drop's refresh."),
    line: str = typer.Option("main", "--line", help="Model line."),
    strategy: str | None = typer.Option(None, "--strategy", help="Replay strategy (default: params)."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to queue behind a running refresh (else exit 3)."),
) -> None:
    """The main job: ingest, train with replay, evaluate, register and gate every new drop (a Prefect flow)."""
    reports = _run_refresh(ctx, source, force, line, strategy, wait)
    if reports:
        _print_reports(reports)
    else:
        out.print("no new drop to train on")


@app.command()
def serve(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Drops root watched by every scheduled refresh."),
    cron: str = typer.Option("0 3 * * *", "--cron", help="Cron schedule of the refresh deployment."),
    name: str = typer.Option("amr-refresh", "--name", help="Deployment name."),
) -> None:
    """Serve the refresh flow on this machine on a cron schedule (Prefect `flow.serve`; Ctrl-C stops it).

    Without PREFECT_API_URL it runs on a temporary server started as `amr refresh` starts it (tied to this process,
    the same start-up limit, one line if it does not answer); that server has no scheduler, so Prefect warns:
    point PREFECT_API_URL at `prefect server start` for the cron runs."""
    from components.cli.ephemeral import ServerStartError, temporary_server
    from flows.refresh import refresh as refresh_flow

    settings(ctx)
    params = ctx.find_root().obj
    with exits_on(ServerStartError), temporary_server():
        refresh_flow.serve(
            name=name, cron=cron, parameters={"source": source, "params": str(params) if params else None}, limit=1
        )


@app.command()
def promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Registered model version to make champion."),
    note: str = typer.Option("", "--note", help="Why (recorded on the version)."),
) -> None:
    """Manual override: make VERSION the champion, whatever the gate said (recorded as manual)."""
    from components.adapters import registry
    from components.adapters.locks import refresh_lock
    from components.evaluation.gate import override

    cfg = settings(ctx)
    with exits_on(registry.RegistryError, registry.MlflowException), refresh_lock(cfg.home):
        registry.configure(cfg)
        mv = registry.set_champion(
            registry.client(),
            cfg.mlflow.registered_model,
            version,
            override(None, note or f"amr promote {version}"),
            manual=True,
        )
    out.print(f"{cfg.mlflow.registered_model} version {mv.version} is champion (manual override)")


@app.command("rollback-model")
def rollback_model(ctx: typer.Context) -> None:
    """Move `champion` back to the `previous` version."""
    from components.adapters import registry
    from components.adapters.locks import refresh_lock

    cfg = settings(ctx)
    with exits_on(registry.RegistryError, registry.MlflowException), refresh_lock(cfg.home):
        registry.configure(cfg)
        mv = registry.rollback_champion(registry.client(), cfg.mlflow.registered_model)
    out.print(f"{cfg.mlflow.registered_model}: champion is back to version {mv.version}")


@app.command()
def demo(
    ctx: typer.Context,
    drops_dir: Path = typer.Option(Path("demo-drops"), help="Where to build the demo drops."),
) -> None:
    """Build demo drops from real text on this machine and run the full refresh over them."""
    from components.adapters.registry import configure
    from components.cli.logs import refresh_log
    from components.ingest.demo import build_demo_drops

    cfg = settings(ctx)
    out.rule("amr demo")
    dirs = build_demo_drops(drops_dir)
    out.print(f"built {len(dirs)} demo drops from real text on this machine under {drops_dir}/")
    reports = _run_refresh(ctx, str(drops_dir), False, "main", None, 0.0)
    if reports:
        _print_reports(reports)
    from components.core.metrics import forgetting

    line = open_line(cfg, "main")
    if line.state.loss_matrix:
        print_eval(line.matrix, forgetting(line.matrix), line.root / "eval" / "loss_matrix.png")
    uri = configure(cfg)
    out.rule("look at the results")
    where = f"experiment '{cfg.mlflow.experiment}', model '{cfg.mlflow.registered_model}'"
    if uri.startswith(("http://", "https://")):
        out.print(f"MLflow:  open {uri}   ({where})", highlight=False)
    else:
        out.print(
            f"MLflow:  .venv/bin/mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000, {where})",
            highlight=False,
        )
    api = os.environ.get("PREFECT_API_URL")
    out.print(
        f"Prefect: open {api.removesuffix('/api')}   (flow runs and the gate artifacts)"
        if api
        else "Prefect: .venv/bin/prefect server start   (then http://127.0.0.1:4200: flow runs and gate artifacts)",
        highlight=False,
    )
    out.print("Memory:  amr memory   |   amr memory versions   |   amr evaluate", highlight=False)
    out.print(f"Logs:    {refresh_log(cfg.home)}   (Prefect's and MLflow's log lines)", highlight=False)


# ---- data versioning: lock file, rollback, retention, DVC stage outputs --------------------------------------
