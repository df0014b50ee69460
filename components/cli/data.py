"""`amr ingest` and `amr memory ...`: drops into the LanceDB memory, and what the memory holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from components.cli.base import app, err, exits_on, memory_app, out, settings
from components.core.config import Settings


@app.command()
def ingest(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Drops root: a directory or s3://bucket/prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON, no progress bars."),
) -> None:
    """Ingest every ready drop of SOURCE into the memory (idempotent; bad drops are quarantined)."""
    from components.ingest import exit_code, ingest_source

    cfg = settings(ctx)
    with exits_on(Exception, with_type=True):
        results = ingest_source(cfg, source, show_progress=not as_json and err.is_terminal)
    code = exit_code(results)
    if as_json:
        print(json.dumps({"results": [r.to_dict() for r in results], "exit_code": code}, indent=2))
    else:
        colors = {"ingested": "green", "present": "cyan", "duplicate": "cyan", "pending": "yellow"}
        for r in results:
            color = colors.get(r.status, "red")
            out.print(f"[{color}]{r.status:>9}[/{color}] {r.drop_id}: {r.message}", highlight=False)
        if not results:
            out.print(f"no drops under {source}")
    raise typer.Exit(code)


def memory_json(cfg: Settings, source: str | None) -> dict:
    from components.adapters.memory import Memory

    memory = Memory.open(cfg)
    drops = [
        {k: getattr(r, k) for k in ("drop_id", "status", "documents", "duplicates", "sequences", "holdout_sequences")}
        | {"tokens": r.tokens}
        | {"clusters": r.clusters, "version": r.version, "error": r.error or None}
        for r in memory.drops()
    ]
    if source:
        from components.ingest.drops import open_source

        known = {d["drop_id"] for d in drops}
        blank = {"documents": 0, "duplicates": 0, "sequences": 0, "holdout_sequences": 0, "tokens": 0}
        blank |= {"clusters": 0, "version": None}
        for ref in open_source(source, cfg.s3).list_drops():
            if ref.drop_id not in known:  # ready or not, it is not in the memory yet
                drops.append({"drop_id": ref.drop_id, "status": "pending", **blank, "error": None})
    return {"version": memory.version, "drops": drops}


def verify_memory(cfg: Settings, lock_path: Path) -> str:
    """Memory.verify, then each drop's rows against the lock file's row hashes when it pins this memory version."""
    from components.adapters.integrity import FIX_CORRUPT
    from components.adapters.manifest import drop_digests
    from components.adapters.memory import Memory
    from components.adapters.records import MemoryCorrupted

    memory = Memory.open(cfg)
    report = memory.verify()
    summary = f"{memory.uri}: memory version {report.version} healthy, {len(report.files)} drops, {report.rows} rows"
    lock = json.loads(lock_path.read_text(encoding="utf-8")) if lock_path.is_file() else None
    if lock is None or lock.get("memory_version") != report.version:
        return summary + (f" ({lock_path} pins another version: rows not compared)" if lock else "")
    digests = drop_digests(memory, report.version)
    bad = sorted(d["drop_id"] for d in lock["drops"] if digests.get(d["drop_id"], (0, ""))[1] != d["rows_hash"])
    if bad:
        files = ", ".join(sorted({f for d in bad for f in report.files.get(d, [])})) or memory.uri
        raise MemoryCorrupted(f"{files}: the rows of {bad} differ from {lock_path}. Fix: {FIX_CORRUPT}.")
    return summary + f", rows match {lock_path}"


@memory_app.callback()
def memory(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    source: str | None = typer.Option(None, "--source", help="Also list this source's drops not ingested yet."),
    verify: bool = typer.Option(
        False, "--verify", help="Read every data file of the memory version; exit 1 naming a missing or damaged one."
    ),
    lock: Path = typer.Option(
        Path("memory.lock.json"), "--lock", help="With --verify: also compare rows with this lock file's hashes."
    ),
) -> None:
    """Show the memory version and every drop (or, with --verify, check that every data file reads back)."""
    if ctx.invoked_subcommand:
        return
    from components.adapters.records import MemoryStoreError
    from components.adapters.s3 import S3Unavailable

    cfg = settings(ctx)
    with exits_on(MemoryStoreError, S3Unavailable, OSError, ValueError):
        if verify:
            out.print(verify_memory(cfg, lock), highlight=False)
            return
        data = memory_json(cfg, source)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"memory version {data['version']}")
    for col in ("drop", "status", "docs", "dups", "train seqs", "holdout", "tokens", "clusters", "version", "error"):
        table.add_column(col)
    for d in data["drops"]:
        table.add_row(
            d["drop_id"],
            d["status"],
            str(d["documents"]),
            str(d["duplicates"]),
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
    from components.adapters.memory import Memory
    from components.adapters.records import MemoryStoreError
    from components.adapters.s3 import S3Unavailable

    cfg = settings(ctx)
    with exits_on(MemoryStoreError, S3Unavailable):
        versions = Memory.open(cfg).versions()
    if as_json:
        print(json.dumps(versions, indent=2))
        return
    table = Table(title="memory versions (drop commits are complete memory versions)")
    for col in ("version", "timestamp", "rows", "tags", "drop commit"):
        table.add_column(col)
    for v in versions:
        table.add_row(str(v["version"]), v["timestamp"], str(v["rows"]), ", ".join(v["tags"]), "yes" * v["drop_commit"])
    out.print(table)


@memory_app.command("lock")
def memory_lock(
    ctx: typer.Context,
    out_file: Path = typer.Option(Path("memory.lock.json"), "--out", help="Lock file to write (kept in git)."),
    verify: bool = typer.Option(
        False, "--verify", help="First re-hash every row and compare with the digests stored at ingest (reads it all)."
    ),
) -> None:
    """Write the memory's lock file: version, live drops and the content hash of every row (DVC ingest stage).

    The hash combines each drop's row digest stored at ingest (O(number of drops)); --verify re-reads the rows."""
    from components.adapters.manifest import ManifestError, verify_digests, write_manifest
    from components.adapters.memory import Memory
    from components.adapters.records import MemoryStoreError
    from components.adapters.s3 import S3Unavailable

    cfg = settings(ctx)
    with exits_on(MemoryStoreError, ManifestError, S3Unavailable):
        memory = Memory.open(cfg)
        bad = verify_digests(memory) if verify else []
        if bad:
            raise ManifestError(
                f"{memory.uri}: the rows of {bad} no longer match the digests recorded at ingest; lock not written. "
                "Fix: `amr memory --verify` names the damaged files; roll back or re-ingest into a new memory."
            )
        lock = write_manifest(memory, out_file)
    out.print(
        f"{out_file}: memory version {lock['memory_version']}, {len(lock['drops'])} drops, {lock['rows']} rows, "
        f"content {lock['content_hash'][:12]}",
        highlight=False,
    )


@memory_app.command("compact")
def memory_compact(
    ctx: typer.Context,
    min_fragments: int = typer.Option(2, "--min-fragments", min=2, help="Compact only past this many small fragments."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Merge the memory version's small fragments (tag compacted-<v>); row ids, tags and the lock stay the same."""
    from components.adapters.memory import Memory
    from components.adapters.records import MemoryStoreError
    from components.adapters.s3 import S3Unavailable

    cfg = settings(ctx)
    with exits_on(MemoryStoreError, S3Unavailable):
        report = Memory.open(cfg).compact(cfg.memory.compact_rows_per_fragment, min_fragments)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    out.print(f"memory version {report.version}: {report.note} ({report.seconds:.1f} s)", highlight=False)


@memory_app.command("cleanup")
def memory_cleanup(
    ctx: typer.Context,
    older_than: float = typer.Option(7.0, "--older-than", min=0.0, help="Remove only versions older than DAYS."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Remove old memory versions, never a tagged one or one a registered model was trained on; says why."""
    from components.versioning.retention import cleanup

    cfg = settings(ctx)
    with exits_on(Exception, with_type=True):  # e.g. the MLflow registry unreachable: nothing was removed (fail closed)
        report = cleanup(cfg, older_than, dry_run)
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
