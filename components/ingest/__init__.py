"""Ingest stage: drop sources and readers (drops/), tokenize, split, pack, cluster, commit to the memory (pipeline)."""

from components.ingest.pipeline import exit_code, ingest_source

__all__ = ["exit_code", "ingest_source"]
