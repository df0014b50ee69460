"""The served model: an MLflow "models from code" pyfunc over a safetensors causal LM.

`registry.log_model_version` logs this file as the model's code, so nothing is pickled: MLflow copies the
file next to the weights and runs it at load time, and `load_context` reads the weights with transformers
(local files only, safetensors only, no remote code). The file is self-contained on purpose (torch,
transformers, pandas, mlflow; nothing from `components`) so a registered model loads wherever those
packages are installed, without this repository.

Input: a DataFrame (or a list of lists, or a dict of lists) whose `input_ids` column holds one list of token
ids per row, in the tokenizer the model was trained with (recorded in the version's metadata by training).
Output: a DataFrame with one row per input row:
  * `loss`: the mean next-token cross-entropy of the row (nats/token), the same definition as training
    and held-out evaluation use; NaN for a row with fewer than two tokens (nothing to predict);
  * `next_token`: the greedy (argmax) next token id after the row's last token; -1 for an empty row.
This scores text against the model (how well it still knows a drop) and gives one step of generation,
which is what a smoke test of a deployed refresh needs.
"""

from __future__ import annotations

import importlib.metadata
import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.models import ModelSignature, set_model
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Array, ColSpec, DataType, Schema

WEIGHTS = "weights"  # the artifact key under which the weights directory is logged
BATCH_SIZE = 32
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(DataType.long), "input_ids")]),
    outputs=Schema([ColSpec(DataType.double, "loss"), ColSpec(DataType.long, "next_token")]),
)


def requirements() -> list[str]:
    """What this file imports, pinned to the running environment (local tags like `+cpu` dropped; MLflow adds
    itself). Explicit pins keep MLflow from inferring requirements, which imports the model and may go online."""
    pkgs = ("torch", "transformers", "safetensors", "numpy", "pandas")
    return [f"{p}=={importlib.metadata.version(p).split('+')[0]}" for p in pkgs]


def _token_rows(model_input: pd.DataFrame) -> list[list[int]]:
    """MLflow has already enforced the signature: an `input_ids` column of integer arrays."""
    return [[int(t) for t in np.asarray(row).reshape(-1)] for row in model_input["input_ids"].tolist()]


class CausalLMScorer(PythonModel):
    """Per-row mean next-token loss and greedy next token of a local causal LM."""

    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM

        device = (context.model_config or {}).get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            context.artifacts[WEIGHTS], local_files_only=True, trust_remote_code=False, use_safetensors=True
        ).to(self.device)
        self.model.eval()
        self.vocab_size = self.model.get_input_embeddings().num_embeddings

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = _token_rows(model_input)
        bad = [t for row in rows for t in row if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        losses: list[float] = []
        nexts: list[int] = []
        for start in range(0, len(rows), BATCH_SIZE):
            batch_losses, batch_next = self._score(rows[start : start + BATCH_SIZE])
            losses += batch_losses
            nexts += batch_next
        return pd.DataFrame({"loss": np.asarray(losses, dtype=np.float64), "next_token": np.asarray(nexts, np.int64)})

    @torch.no_grad()
    def _score(self, rows: list[list[int]]) -> tuple[list[float], list[int]]:
        """Right-padded batch; padding positions are masked out of attention and of the loss."""
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        width = max(int(lengths.max()), 1)
        tokens = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask = torch.arange(width, device=self.device)[None, :] < lengths[:, None]
        logits = self.model(input_ids=tokens, attention_mask=mask.long()).logits.float()
        targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
        token_losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=-100)
        counts = (targets != -100).sum(dim=1)
        sums = token_losses.double().sum(dim=1)
        losses = [float(s / c) if c > 0 else math.nan for s, c in zip(sums.tolist(), counts.tolist(), strict=True)]
        last = (lengths - 1).clamp(min=0)
        nexts = logits[torch.arange(len(rows), device=self.device), last].argmax(dim=-1)
        nexts = torch.where(lengths > 0, nexts, torch.full_like(nexts, -1))
        return losses, nexts.tolist()


# MLflow's models-from-code loader runs this file under a module name of its own and takes the model set here.
# Imported as `components.adapters.registry.serving` (for SIGNATURE and requirements), it leaves MLflow's global alone.
if __name__ != "components.adapters.registry.serving":
    set_model(CausalLMScorer())
