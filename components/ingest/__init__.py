"""Ingest stage: drop sources and readers (drops/), tokenize, split, pack, cluster, commit to the memory (pipeline).

`ingest_source` and `exit_code` are imported on first use (PEP 562), so a scan worker process
(components.ingest.parallel), which needs only the readers, does not load LanceDB and scikit-learn.
"""

__all__ = ["exit_code", "ingest_source"]


def __getattr__(name: str):
    if name in __all__:
        from components.ingest import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
