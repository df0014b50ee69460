"""`amr rollback`, `amr metrics` and `amr dvc-remote`: data versions with DVC."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from components.cli.base import app, err, exits_on, out, settings


@app.command()
def rollback(
    ctx: typer.Context,
    to: str = typer.Option(..., "--to", help="Git revision (tag, branch, commit) whose data to restore."),
    lock: Path = typer.Option(Path("memory.lock.json"), "--lock", help="The lock file's path in the repository."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Restore the drops (DVC) and the memory (its version recorded at REV) to revision REV, proven by hash."""
    from components.adapters.dvcrepo import RepoError
    from components.adapters.manifest import ManifestError
    from components.adapters.records import MemoryStoreError
    from components.versioning.rollback import rollback as do_rollback

    cfg = settings(ctx)
    with exits_on(ManifestError, RepoError, MemoryStoreError):  # RollbackError is a ManifestError
        report = do_rollback(cfg, to, lock)
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
    from components.refresh.report import write_stage_outputs

    cfg = settings(ctx)
    with exits_on(ValueError):
        m = write_stage_outputs(cfg, line_name, out_dir)
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
    from components.adapters.dvcrepo import RepoError, configure_remote, repo_root

    cfg = settings(ctx)
    if not url.startswith("s3://"):
        err.print(f"[red]error:[/red] {url!r} is not an s3:// URL", highlight=False)
        raise typer.Exit(1)
    with exits_on(RepoError):
        done = configure_remote(repo_root(Path.cwd()), url, name, cfg.s3)
    out.print(f"DVC remote {name} (default): " + ", ".join(f"{k}={v}" for k, v in done.items()), highlight=False)
