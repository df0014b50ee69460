"""The `amr` command line. Every command is a thin shell over a components/ function.

Exit codes: 0 success; 1 failure (bad configuration, unreachable store, crash); 2 bad data (a drop rejected or
refused, a gate that said no where that is asked to fail).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from components.config import ConfigError, Settings, load_settings

# Offline by default: models and tokenizers load from local directories only, and no service phones home.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_key, _value)

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


def _train_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
    )


@app.command()
def train(
    ctx: typer.Context,
    drop: str | None = typer.Option(None, "--drop", help="Drop to train on (default: the next untrained one)."),
    strategy: str | None = typer.Option(None, "--strategy", help="none | uniform | balanced | amr (default: params)."),
    line_name: str = typer.Option("main", "--line", help="Model line (one continually trained model)."),
    nproc: int | None = typer.Option(
        None, "--nproc", help="Data-parallel processes under torchrun (default: train.nproc); gloo on CPU, NCCL on GPU."
    ),
) -> None:
    """Train the line's model on the next (or given) ingested drop with replay, then evaluate it."""
    from components.evaluation import evaluate_line
    from components.lines import Line
    from components.memory import Memory
    from components.training.loop import train_drop

    cfg = settings(ctx, **{"replay.strategy": strategy, "train.nproc": nproc})
    memory, line = Memory.open(cfg), Line(cfg.home, line_name)
    todo = [d for d in memory.ingested() if d not in line.trained]
    if drop is None and not todo:
        out.print(f"line {line_name} has trained on every ingested drop ({len(line.trained)}); nothing to do")
        return
    target = drop or todo[0]
    if cfg.train.nproc > 1:
        from components.training.distributed import launch

        err.print(f"train {target} ({cfg.replay.strategy}) on {cfg.train.nproc} processes (torchrun)")
        result = launch(cfg, line, target)
    else:
        with _train_progress(err.is_terminal) as bars:
            task = bars.add_task(f"train {target} ({cfg.replay.strategy})", total=None)
            result = train_drop(
                cfg, memory, line, target, progress=lambda s, n: bars.update(task, completed=s, total=n)
            )
    ev = evaluate_line(cfg, memory, line)
    out.print(
        f"trained {target}: {result.steps} steps, {result.new_sequences} new + {result.replay_sequences} replay "
        f"sequences, final loss {result.final_loss:.4f}, {result.wall_seconds:.1f}s"
        + (f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else "")
    )
    _print_eval(ev.matrix, ev.forgetting, ev.artifacts["png"])


def _print_eval(m, f, png: Path) -> None:
    """The loss matrix L[t][j] and the forgetting figures of its last row."""
    table = Table(title="held-out loss L\\[t]\\[j] (nats/token); row t = after training drop t")
    table.add_column("after")
    for d in m.drops:
        table.add_column(d, justify="right")
    for label, row in zip(m.rows, m.values, strict=True):
        table.add_row(label, *("-" if v != v else f"{v:.4f}" for v in row))
    out.print(table)
    out.print(
        f"forgetting avg {f.avg:.4f}  max {f.max:.4f}  relative avg {f.rel_avg:.4f}  plasticity {f.plasticity:.4f}"
    )
    out.print(f"heatmap: {png}")


@app.command()
def evaluate(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    line_name: str = typer.Option("main", "--line"),
) -> None:
    """Held-out loss of every trained drop: the loss matrix and the forgetting table."""
    from dataclasses import asdict

    from components.evaluation import evaluate_line
    from components.lines import Line
    from components.memory import Memory

    cfg = settings(ctx)
    try:
        ev = evaluate_line(cfg, Memory.open(cfg), Line(cfg.home, line_name))
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(
            json.dumps(
                {
                    "loss_matrix": ev.matrix.to_dict(),
                    "forgetting": asdict(ev.forgetting),
                    "artifacts": {k: str(v) for k, v in ev.artifacts.items()},
                },
                indent=2,
                default=str,
            )
        )
    else:
        _print_eval(ev.matrix, ev.forgetting, ev.artifacts["png"])


bench_app = typer.Typer(help="Benchmarks built into the CLI.")
app.add_typer(bench_app, name="bench")


@bench_app.command("forgetting")
def bench_forgetting_cmd(
    ctx: typer.Context,
    stream_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A directory of drops, in name order."),
    strategies: str = typer.Option("none,uniform,balanced,amr", help="Comma-separated strategies."),
    out_file: Path = typer.Option(Path("forgetting.json"), "--out", help="JSON report; .md and .png beside it."),
) -> None:
    """Train every strategy through the same stream at equal compute and compare forgetting."""
    from components.bench import bench_forgetting

    cfg = settings(ctx)
    try:
        bench_forgetting(
            cfg,
            stream_dir,
            [s.strip() for s in strategies.split(",") if s.strip()],
            out_file,
            log=lambda m: err.print(m, highlight=False),
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(out_file.with_suffix(".md").read_text())
    out.print(f"wrote {out_file}, {out_file.with_suffix('.md')}, {out_file.with_suffix('.png')}")


def _print_reports(reports: list[dict]) -> None:
    table = Table(title="refresh: gate decisions")
    for col in ("drop", "model version", "decision", "avg forgetting", "max forgetting", "new-drop loss", "steps"):
        table.add_column(col)
    for r in reports:
        decision = "[green]champion[/green]" if r["promote"] else "[red]rejected[/red]"
        table.add_row(
            r["drop_id"],
            r["version"],
            decision,
            f"{r['forgetting_avg']:.4f}",
            f"{r['forgetting_max']:.4f}",
            f"{r['plasticity']:.4f}",
            str(r["steps"]),
        )
    out.print(table)
    for r in reports:
        failed = [x for x in r["reasons"] if x.startswith(("fail", "reject"))]
        if failed:
            out.print(f"[red]{r['drop_id']}[/red]: " + "; ".join(failed), highlight=False)


def _run_refresh(ctx: typer.Context, source: str, force: bool, line: str, strategy: str | None, wait: float) -> list:
    from components.locks import RefreshBusy
    from flows.refresh import refresh as refresh_flow

    settings(ctx)  # fail fast, with the key and value, on a bad configuration
    params = ctx.find_root().obj
    try:
        return refresh_flow(
            source=source,
            params=str(params) if params else None,
            force=force,
            line=line,
            strategy=strategy,
            wait_seconds=wait,
        )
    except RefreshBusy as exc:
        err.print(f"[yellow]busy:[/yellow] {exc}", highlight=False)
        raise typer.Exit(3) from None


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
    """Serve the refresh flow on this machine on a cron schedule (Prefect `flow.serve`; Ctrl-C stops it)."""
    from flows.refresh import refresh as refresh_flow

    settings(ctx)
    params = ctx.find_root().obj
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
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components import registry
    from components.gate import override

    cfg = settings(ctx)
    registry.configure(cfg)
    try:
        mv = registry.set_champion(
            MlflowClient(),
            cfg.mlflow.registered_model,
            version,
            override(None, note or f"amr promote {version}"),
            manual=True,
        )
    except (registry.RegistryError, MlflowException) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"{cfg.mlflow.registered_model} version {mv.version} is champion (manual override)")


@app.command("rollback-model")
def rollback_model(ctx: typer.Context) -> None:
    """Move `champion` back to the `previous` version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components import registry

    cfg = settings(ctx)
    registry.configure(cfg)
    try:
        mv = registry.rollback_champion(MlflowClient(), cfg.mlflow.registered_model)
    except (registry.RegistryError, MlflowException) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"{cfg.mlflow.registered_model}: champion is back to version {mv.version}")


@app.command()
def demo(
    ctx: typer.Context,
    drops_dir: Path = typer.Option(Path("demo-drops"), help="Where to build the demo drops."),
) -> None:
    """Build demo drops from real text on this machine and run the full refresh over them."""
    from components.demo import build_demo_drops
    from components.registry import configure

    cfg = settings(ctx)
    out.rule("amr demo")
    dirs = build_demo_drops(drops_dir)
    out.print(f"built {len(dirs)} demo drops from real text on this machine under {drops_dir}/")
    reports = _run_refresh(ctx, str(drops_dir), False, "main", None, 0.0)
    if reports:
        _print_reports(reports)
    from components.lines import Line
    from components.metrics import forgetting

    line = Line(cfg.home, "main")
    if line.state.get("loss_matrix"):
        _print_eval(line.matrix, forgetting(line.matrix), line.root / "eval" / "loss_matrix.png")
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


# ---- data versioning: lock file, rollback, retention, DVC stage outputs --------------------------------------


@memory_app.command("lock")
def memory_lock(
    ctx: typer.Context,
    out_file: Path = typer.Option(Path("memory.lock.json"), "--out", help="Lock file to write (kept in git)."),
) -> None:
    """Write the memory's lock file: version, live drops and the content hash of every row (DVC ingest stage)."""
    from components.memlock import LockError, write_lock
    from components.memory import Memory, MemoryError_

    cfg = settings(ctx)
    try:
        lock = write_lock(Memory.open(cfg), out_file)
    except (MemoryError_, LockError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(
        f"{out_file}: memory version {lock['memory_version']}, {len(lock['drops'])} drops, {lock['rows']} rows, "
        f"content {lock['content_hash'][:12]}",
        highlight=False,
    )


@memory_app.command("cleanup")
def memory_cleanup(
    ctx: typer.Context,
    older_than: float = typer.Option(7.0, "--older-than", min=0.0, help="Remove only versions older than DAYS."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Remove old memory versions, never a tagged one or one a registered model was trained on; says why."""
    from components.locks import RefreshBusy
    from components.retention import cleanup

    cfg = settings(ctx)
    try:
        report = cleanup(cfg, older_than, dry_run)
    except RefreshBusy as exc:
        err.print(f"[yellow]busy:[/yellow] {exc}", highlight=False)
        raise typer.Exit(3) from None
    except Exception as exc:  # e.g. the MLflow registry unreachable: nothing was removed (fail closed)
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title="memory versions kept")
    table.add_column("version", justify="right")
    table.add_column("why")
    for version, reasons in sorted(report.kept.items()):
        table.add_row(str(version), "; ".join(reasons))
    out.print(table)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(report.removed)} versions: {report.removed or '-'}", highlight=False)
    if not dry_run:
        before, after = report.log_fragments
        out.print(f"freed {report.bytes_removed} bytes; drops log compacted from {before} to {after} fragments")
    for note in report.notes:
        out.print(note)


@app.command()
def rollback(
    ctx: typer.Context,
    to: str = typer.Option(..., "--to", help="Git revision (tag, branch, commit) whose data to restore."),
    lock: Path = typer.Option(Path("memory.lock.json"), "--lock", help="The lock file's path in the repository."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Restore the drops (DVC) and the memory (its version recorded at REV) to revision REV, proven by hash."""
    from components.dvcrepo import RepoError
    from components.locks import RefreshBusy
    from components.memlock import LockError
    from components.memory import MemoryError_
    from components.rollback import rollback as do_rollback

    cfg = settings(ctx)
    try:
        report = do_rollback(cfg, to, lock)
    except RefreshBusy as exc:
        err.print(f"[yellow]busy:[/yellow] {exc}", highlight=False)
        raise typer.Exit(3) from None
    except (LockError, RepoError, MemoryError_) as exc:  # RollbackError is a LockError
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    r = report
    out.print(f"rolled back to {r.rev} ({r.commit[:12]})", highlight=False)
    out.print(f"memory: version {r.version_before} -> {r.version_after}, rows {r.rows_before} -> {r.rows_after}")
    out.print(f"content hash {r.content_hash[:16]} verified against {lock} at {r.commit[:12]}", highlight=False)
    out.print(f"drops removed: {', '.join(r.removed) or '-'}; back: {', '.join(r.returned) or '-'}", highlight=False)
    out.print(f"drops now: {', '.join(r.drops) or '-'} (restored by dvc {r.data})", highlight=False)
    out.print(f"files restored from git: {', '.join(r.files) or '-'} (commit them to record the rollback)")
    for name, action in r.lines.items():
        out.print(f"line {name}: {action}", highlight=False)


@app.command("metrics")
def metrics_cmd(
    ctx: typer.Context,
    line_name: str = typer.Option("main", "--line", help="Model line."),
    out_dir: Path = typer.Option(Path("metrics"), "--out-dir", help="Where to write the DVC metrics and plots."),
) -> None:
    """Write the line's DVC metrics (forgetting, plasticity, gate decision) and plots (DVC refresh stage)."""
    from components.report import write_stage_outputs

    cfg = settings(ctx)
    try:
        m = write_stage_outputs(cfg, line_name, out_dir)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(
        f"{out_dir}/: {m['refreshes']} refreshes of line {line_name}, gate {m['gate']['decision']}, "
        f"forgetting avg {m['forgetting_avg']}, plasticity {m['plasticity']}",
        highlight=False,
    )


@app.command("dvc-remote")
def dvc_remote(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="s3://bucket/prefix for the DVC cache of the drops."),
    name: str = typer.Option("storage", "--name", help="Remote name."),
) -> None:
    """Make URL the default DVC remote, with the endpoint and region of the amr S3 settings (no credentials)."""
    from components.dvcrepo import RepoError, configure_remote, repo_root

    cfg = settings(ctx)
    if not url.startswith("s3://"):
        err.print(f"[red]error:[/red] {url!r} is not an s3:// URL", highlight=False)
        raise typer.Exit(1)
    try:
        done = configure_remote(repo_root(Path.cwd()), url, name, cfg.s3)
    except RepoError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"DVC remote {name} (default): " + ", ".join(f"{k}={v}" for k, v in done.items()), highlight=False)


if __name__ == "__main__":
    app()
