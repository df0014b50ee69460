"""Git and DVC as the user runs them: thin subprocess adapters for rollback and the DVC remote.

DVC is driven through its command line (the stable interface; its Python internals change between releases), from
the same virtual environment as `amr` when it is there. Nothing here prompts: `dvc checkout` without `--force`
refuses to delete workspace data that is not in the cache, and that refusal becomes an error for the caller.
Credentials are never passed or written: DVC's S3 client reads them from the environment like boto3 does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.adapters.s3 import s3_endpoint, s3_region
from components.core.config import S3Config


class RepoError(RuntimeError):
    """Git or DVC refused; the message carries the command and the tail of what it said."""


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-2000:]
        raise RepoError(f"`{' '.join(cmd[:4])}` failed in {cwd} (exit {proc.returncode}): {said}")
    return proc


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["git", *args], repo, check)


def dvc_exe() -> str:
    """The `dvc` beside this Python (the project's venv), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    found = str(local) if local.exists() else shutil.which("dvc")
    if not found:
        raise RepoError("dvc is not installed: install the project (`make setup`), which brings dvc[s3]")
    return found


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([dvc_exe(), *args], repo, check)


def repo_root(start: Path) -> Path:
    """The git work tree holding `start`, which must also be a DVC project."""
    proc = git(Path(start), "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise RepoError(f"{start} is not inside a git repository: rollback works on git revisions")
    root = Path(proc.stdout.decode().strip())
    if not (root / ".dvc").is_dir():
        raise RepoError(f"{root} is not a DVC project: run `dvc init` and track the drops with `dvc add`")
    return root


def resolve(repo: Path, rev: str) -> str:
    """The full commit id of a revision (tag, branch, sha, HEAD~2); an error that names it if unknown."""
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0 or rev.startswith("-"):
        raise RepoError(f"{rev!r} is not a git revision of {repo}: use a tag, a branch or a commit id")
    return proc.stdout.decode().strip()


def file_at(repo: Path, commit: str, path: str) -> bytes | None:
    """A file's bytes at `commit`, or None if it did not exist there."""
    proc = git(repo, "show", f"{commit}:{path}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def tracked_at(repo: Path, commit: str) -> list[str]:
    """The git-tracked files that pin the DVC state at `commit`: dvc.lock files, .dvc files, git-tracked outputs."""
    files = [f for f in git(repo, "ls-tree", "-r", "-z", "--name-only", commit).stdout.decode().split("\0") if f]
    picked = {f for f in files if f.endswith(".dvc") and not f.startswith(".dvc/")}
    for lock in (f for f in files if f == "dvc.lock" or f.endswith("/dvc.lock")):
        picked.add(lock)
        base = os.path.dirname(lock)
        stages = (yaml.safe_load(file_at(repo, commit, lock) or b"") or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                path = os.path.normpath(os.path.join(base, out["path"]))
                picked.update(f for f in files if f == path or f.startswith(path + "/"))  # cache: false outputs
    return sorted(picked)


def restore(repo: Path, commit: str) -> tuple[list[str], str]:
    """Put the DVC state of `commit` in the workspace; returns (files rewritten, "checkout" or "pull").

    The pinning files come from git; the data they name from the DVC cache, or from the default remote when the
    cache lacks it. If neither has it, the rewritten files are put back and the data is left as it was.
    """
    backups: dict[str, bytes | None] = {}
    for path in tracked_at(repo, commit):
        data, target = file_at(repo, commit, path), repo / path
        old = target.read_bytes() if target.exists() else None
        if data is not None and data != old:
            backups[path] = old
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    if dvc(repo, "checkout", check=False).returncode == 0:
        return sorted(backups), "checkout"
    try:
        dvc(repo, "pull")
    except RepoError:
        for path, old in backups.items():
            if old is None:
                (repo / path).unlink(missing_ok=True)
            else:
                (repo / path).write_bytes(old)
        dvc(repo, "checkout", check=False)
        raise
    return sorted(backups), "pull"


def status(repo: Path) -> dict:
    """`dvc status --json`: {} when the workspace matches dvc.lock and the .dvc files."""
    return json.loads(dvc(repo, "status", "--json").stdout or b"{}")


def configure_remote(repo: Path, url: str, name: str, s3: S3Config) -> dict[str, str]:
    """Make `url` the default DVC remote; endpoint and region from the amr S3 settings, into the local config.

    The URL goes to .dvc/config (shared through git); the endpoint and region are per machine, so they go to
    .dvc/config.local (git-ignored). Credentials stay in the environment, where DVC's S3 client finds them.
    """
    dvc(repo, "remote", "add", "--default", "--force", name, url)
    settings = {"url": url}
    endpoint = s3_endpoint(s3)
    if endpoint:
        dvc(repo, "remote", "modify", "--local", name, "endpointurl", endpoint)
        settings["endpointurl"] = endpoint
    else:
        dvc(repo, "remote", "modify", "--local", "--unset", name, "endpointurl", check=False)
    settings["region"] = s3_region(s3)
    dvc(repo, "remote", "modify", "--local", name, "region", settings["region"])
    return settings
