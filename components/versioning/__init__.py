"""Versioning stage: data rollback to a git revision (rollback) and memory version retention (retention)."""
