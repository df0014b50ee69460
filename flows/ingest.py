"""Prefect flow: ingest every ready drop of a source into the LanceDB memory (no training)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.core.config import Settings, load_settings
from components.ingest import ingest_source


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def ingest_drops(settings: Settings, source: str) -> list[dict]:
    """Idempotent, so a retry after a storage hiccup only writes what is still missing."""
    return [r.to_dict() for r in ingest_source(settings, source, show_progress=False)]


@flow(name="amr-ingest", log_prints=True)
def ingest(source: str, params: str | None = None) -> list[dict]:
    settings = load_settings(params)
    results = ingest_drops(settings, source)
    logger = get_run_logger()
    for r in results:
        logger.info("%-9s %s: %s", r["status"], r["drop_id"], r["message"])
    bad = [r for r in results if r["status"] in ("rejected", "refused", "failed")]
    if bad:
        raise RuntimeError(
            f"{len(bad)} drop(s) not ingested: " + "; ".join(f"{r['drop_id']}: {r['status']}" for r in bad)
        )
    return results
