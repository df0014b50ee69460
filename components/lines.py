"""A model line: one model continually trained drop after drop, with its state on disk.

`$AMR_HOME/lines/<name>/` holds
  state.json        the commit point: drops trained (in order), memory version of each, the current model
                    directory, the sampler state carried to the next refresh, the arms' reference losses,
                    the loss matrix and a history row per drop
  models/<drop>/    the weights after training <drop> (safetensors + config.json); the newest two are kept
  checkpoints/<drop>/  in-progress checkpoints of the drop being trained (removed once it is committed)
  eval/             loss matrix JSON/CSV/heatmap of the latest evaluation

`state.json` is replaced atomically and written last, so a crash at any point leaves the previous state, and
an unfinished drop resumes from its checkpoints. The refresh flow uses the line `main`; the forgetting
benchmark uses one line per strategy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.metrics import LossMatrix
from components.training.model import save_model

KEEP_MODELS = 2
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Line:
    def __init__(self, home: Path, name: str = "main"):
        if not NAME.match(name):
            raise ValueError(f"line name {name!r}: use letters, digits, '.', '_' or '-'")
        self.name = name
        self.root = Path(home) / "lines" / name
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        path = self.root / "state.json"
        if not path.exists():
            return {
                "trained": [],
                "versions": {},
                "model": None,
                "sampler": None,
                "arm_ref": {},
                "history": [],
                "loss_matrix": None,
            }
        return json.loads(path.read_text())

    def save(self) -> None:
        write_json_atomic(self.root / "state.json", self.state)

    @property
    def trained(self) -> list[str]:
        return list(self.state["trained"])

    @property
    def model_dir(self) -> Path | None:
        return self.root / self.state["model"] if self.state["model"] else None

    def checkpoints(self, drop_id: str) -> Path:
        return self.root / "checkpoints" / drop_id

    @property
    def matrix(self) -> LossMatrix:
        data = self.state.get("loss_matrix")
        return LossMatrix.from_dict(data) if data else LossMatrix()

    def commit_training(self, model, drop_id: str, version: int, sampler_state: dict | None, result) -> None:
        """Publish the trained weights, then the state that points at them; drop the checkpoints."""
        final = self.root / "models" / drop_id
        write_json_atomic(self.root / "states" / f"{drop_id}.json", self.state)  # what `rewind` restores
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{drop_id}-", dir=self._mkdir("models")))
        save_model(model, tmp)
        if final.exists():  # a previous attempt died after publishing but before state.json: redo it
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.state["trained"].append(drop_id)
        self.state["versions"][drop_id] = version
        self.state["model"] = str(final.relative_to(self.root))
        if sampler_state is not None:
            self.state["sampler"] = sampler_state
        self.state["history"].append({k: v for k, v in asdict(result).items() if k != "arm_probabilities"})
        self.save()
        shutil.rmtree(self.checkpoints(drop_id), ignore_errors=True)
        for old in self.state["trained"][:-KEEP_MODELS]:
            shutil.rmtree(self.root / "models" / old, ignore_errors=True)

    def rewind(self) -> str:
        """Undo the last trained drop (for `refresh --force`): its state before, its model gone; returns its id."""
        if len(self.trained) < 1:
            raise ValueError(f"line {self.name} has trained nothing; nothing to rewind")
        last = self.trained[-1]
        before = json.loads((self.root / "states" / f"{last}.json").read_text())
        if before["model"] and not (self.root / before["model"]).exists():
            raise ValueError(f"line {self.name}: the model before {last} was pruned; rewind is limited to one drop")
        self.state = before
        self.save()
        shutil.rmtree(self.root / "models" / last, ignore_errors=True)
        return last

    def commit_evaluation(self, matrix: LossMatrix, arm_ref: dict[str, float]) -> None:
        self.state["loss_matrix"] = matrix.to_dict()
        self.state["arm_ref"] = arm_ref
        self.save()

    def _mkdir(self, sub: str) -> Path:
        path = self.root / sub
        path.mkdir(parents=True, exist_ok=True)
        return path
