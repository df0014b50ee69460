"""`amr train --nproc N`: one drop trained by N local processes under torchrun (how they share it: ranks.py).

`launch` runs `python -m torch.distributed.run --standalone --nproc-per-node N -m components.training.launcher ...`;
each process runs `main`, which joins the group and calls `train_drop` with its `Dist`. Rank 0 logs the step
metrics into the drop's MLflow run and writes the result for the launcher.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch.distributed as tdist

from components.adapters import registry
from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.files import write_json_atomic
from components.training.loop import TrainResult, train_drop
from components.training.ranks import init_distributed, local_slots

ROOT = Path(__file__).resolve().parents[2]  # holds the `components` package, for the ranks' PYTHONPATH


def launch(settings: Settings, line: Line, drop_id: str, run_id: str | None = None) -> TrainResult:
    """Train `drop_id` on `settings.train.nproc` local processes under torchrun; reloads `line`'s state after.

    The ranks get the resolved settings as a file and no AMR_* variable, so what they run is exactly `settings`
    (command-line overrides included). With `run_id`, rank 0 logs the step metrics into that MLflow run.
    """
    if drop_id in line.trained:
        raise ValueError(f"{line.name} has already trained on drop {drop_id}")
    nproc = settings.train.nproc
    local_slots(0, 0, settings.train.batch_size, 0, nproc)  # fail here, not in N tracebacks
    with tempfile.TemporaryDirectory(prefix="amr-torchrun-") as tmp:
        config, result = Path(tmp) / "settings.json", Path(tmp) / "result.json"
        config.write_text(settings.model_dump_json(), encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", __name__, "--settings", str(config), "--line", line.name, "--drop", drop_id]
        cmd += ["--result", str(result), "--launcher-pid", str(os.getpid())] + (["--run-id", run_id] if run_id else [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMR_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"torchrun with {nproc} processes exited with {code}; the ranks' errors are above")
        data = json.loads(result.read_text(encoding="utf-8"))
    line.reload()
    return TrainResult(**data)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def die_with(launcher_pid: int) -> None:
    """Exit when the launcher or the torchrun agent dies, even by SIGKILL.

    torchrun starts each rank in a session of its own, so killing the launcher's process group (a crashed flow
    worker, Ctrl-C twice, the OOM killer) would leave the ranks training and then committing behind the back of
    the retry that resumes the same drop. PR_SET_PDEATHSIG ties a rank to the agent; a watcher thread to the launcher.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while _alive(launcher_pid):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="amr-launcher-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, train the drop, and (rank 0) write the result for `launch`."""
    parser = argparse.ArgumentParser(description="One torchrun rank of `amr train --nproc N` (started by launch).")
    for flag in ("--settings", "--line", "--drop", "--result"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--launcher-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.launcher_pid:
        die_with(args.launcher_pid)
    settings = Settings(**json.loads(Path(args.settings).read_text(encoding="utf-8")))
    dist = init_distributed(settings.train.device)
    if dist.world_size < 2:
        raise SystemExit("run under torchrun with more than one process (`amr train --nproc N` does)")
    try:
        logger = None
        if dist.is_main and args.run_id:
            registry.configure(settings)
            logger = registry.StepLogger(args.run_id)
        memory, line = Memory.open(settings), Line(settings.home, args.line)
        result = train_drop(settings, memory, line, args.drop, on_step=logger, dist=dist)
        if logger is not None:
            logger.flush()
        if dist.is_main:
            write_json_atomic(Path(args.result), asdict(result))
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
