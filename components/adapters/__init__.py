"""Adapters to the engines: the LanceDB memory and its manifest, model lines on disk, locks, S3, DVC/git, MLflow.

Imports only the core; the stages above reach every engine through these modules.
"""
