"""The served model: an MLflow "models from code" pyfunc over a safetensors causal LM and its tokenizer.

`registry.log_model_version` logs this file as the model's code, so nothing is pickled: MLflow copies the
file next to two artifact directories, the weights (`config.json` + safetensors) and the tokenizer (the files
`save_pretrained` writes: ByT5's for the byte tokenizer, `tokenizer.json` & co. for a BPE one), and runs it at
load time. `load_context` reads both with transformers, local files only, safetensors only, no remote code.
The file is self-contained on purpose (torch, transformers, pandas, mlflow; nothing from `components`) so a
registered model loads wherever those packages are installed, without this repository.

Input, one row per text: a `text` column (a string, encoded like ingest does: no special tokens added, a
literal "</s>" stays text) and/or an `input_ids` column (a list of token ids, in the tokenizer the model was
trained with); each row gives one of the two. Versions logged before the tokenizer was bundled take
`input_ids` only.

Output, one row per input row:
  * `loss`: mean next-token cross-entropy (nats/token), the definition training and evaluation use; NaN for a
    row with fewer than two tokens (nothing to predict); `perplexity` = exp(loss);
  * `next_token`: the greedy (argmax) next token id after the row's last token; -1 for an empty row;
  * with `params={"max_new_tokens": N}` (N > 0): `continuation` (decoded text) and `continuation_ids`, greedy
    unless `temperature` > 0, then sampled from the top-`top_p` nucleus (no top-k cut) with torch seeded from
    `seed` for the request, so the same request gives the same continuation. Rows are generated in left-padded
    batches (one `generate` call per 32 rows: on CPU a tiny model's step costs the same for 1 row as for 8); a
    row's continuation stops at its first eos.

Rows longer than the model's positions are scored in windows of the full width that advance by half of it:
every token after the first is predicted exactly once, with at least half a window of context, and the loss
is the mean over all of them. Generation sees the last `positions - max_new_tokens` tokens of a row.
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
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

WEIGHTS = "weights"  # the artifact key under which the weights directory is logged
TOKENIZER = "tokenizer"  # the artifact key of the tokenizer directory
BATCH_SIZE = 32
PARAMS = ParamSchema(
    [
        ParamSpec("max_new_tokens", DataType.long, 0),
        ParamSpec("temperature", DataType.double, 0.0),
        ParamSpec("top_p", DataType.double, 1.0),
        ParamSpec("seed", DataType.long, 0),
    ]
)
SIGNATURE = ModelSignature(
    inputs=Schema(
        [ColSpec(DataType.string, "text", required=False), ColSpec(Array(DataType.long), "input_ids", required=False)]
    ),
    outputs=Schema(
        [
            ColSpec(DataType.double, "loss"),
            ColSpec(DataType.double, "perplexity"),
            ColSpec(DataType.long, "next_token"),
            ColSpec(DataType.string, "continuation", required=False),
            ColSpec(Array(DataType.long), "continuation_ids", required=False),
        ]
    ),
    params=PARAMS,
)


def requirements() -> list[str]:
    """What this file imports, pinned to the running environment (local tags like `+cpu` dropped; MLflow adds
    itself). Explicit pins keep MLflow from inferring requirements, which imports the model and may go online."""
    pkgs = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "pandas")
    return [f"{p}=={importlib.metadata.version(p).split('+')[0]}" for p in pkgs]


def windows(n: int, width: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored target) of each window over a row of `n` tokens: full-width windows advancing
    by half a width, each scoring the targets the previous one did not."""
    end, out = min(n, width), [(0, min(n, width), 1)]
    while end < n:
        first, end = end, min(end + max(width // 2, 1), n)
        out.append((end - width, end, first))
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class CausalLMScorer(PythonModel):
    """Per-row loss, perplexity, next token and optional continuation of a local causal LM."""

    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = (context.model_config or {}).get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        local = {"local_files_only": True, "trust_remote_code": False}
        self.model = AutoModelForCausalLM.from_pretrained(context.artifacts[WEIGHTS], use_safetensors=True, **local)
        self.model.to(self.device).eval()
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        config = self.model.config
        self.positions = int(getattr(config, "max_position_embeddings", None) or config.n_positions)
        path = context.artifacts.get(TOKENIZER)
        self.tokenizer = AutoTokenizer.from_pretrained(path, **local) if path else None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = self._token_rows(model_input)
        p = {spec.name: spec.default for spec in PARAMS.params} | (params or {})
        losses, nexts = self._score_rows(rows)
        loss = np.asarray(losses, dtype=np.float64)
        out = pd.DataFrame({"loss": loss, "perplexity": np.exp(loss), "next_token": np.asarray(nexts, np.int64)})
        if int(p["max_new_tokens"]) > 0:
            ids = self._generate(
                rows, int(p["max_new_tokens"]), float(p["temperature"]), float(p["top_p"]), int(p["seed"])
            )
            out["continuation"] = [self._decode(c) for c in ids]
            out["continuation_ids"] = ids
        return out

    # ---- input ----------------------------------------------------------------------------------------------

    def _token_rows(self, frame: pd.DataFrame) -> list[list[int]]:
        texts = frame["text"].tolist() if "text" in frame else [None] * len(frame)
        ids = frame["input_ids"].tolist() if "input_ids" in frame else [None] * len(frame)
        rows = []
        for i, (text, row) in enumerate(zip(texts, ids, strict=True)):
            if _present(text) and _present(row):
                raise ValueError(f"row {i}: give `text` or `input_ids`, not both")
            if _present(text):
                rows.append(self._encode(str(text)))
            elif _present(row):
                rows.append([int(t) for t in np.asarray(row).reshape(-1)])
            else:
                raise ValueError(f"row {i}: no `text` and no `input_ids`; send one of the two columns")
        bad = [t for row in rows for t in row if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return rows

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model version has no bundled tokenizer (logged before text serving): send input_ids")
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _decode(self, ids: list[int]) -> str | None:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else None

    # ---- scoring --------------------------------------------------------------------------------------------

    def _score_rows(self, rows: list[list[int]]) -> tuple[list[float], list[int]]:
        """Every window of every row through the model in batches; sums and counts gathered back per row."""
        items = [(i, row[s:e], f - s) for i, row in enumerate(rows) for s, e, f in windows(len(row), self.positions)]
        sums, counts, nexts = [0.0] * len(rows), [0] * len(rows), [-1] * len(rows)
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            for (i, _, _), (s, c, nxt) in zip(batch, self._score([(t, k) for _, t, k in batch]), strict=True):
                sums[i], counts[i], nexts[i] = sums[i] + s, counts[i] + c, nxt  # the row's last window gives next
        return [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)], nexts

    @torch.no_grad()
    def _score(self, items: list[tuple[list[int], int]]) -> list[tuple[float, int, int]]:
        """(loss sum, scored targets, greedy next token) per window. Right-padded batch; padding positions are
        masked out of attention and of the loss, and so are targets before the window's first scored one."""
        lengths = torch.tensor([len(t) for t, _ in items], device=self.device)
        width = max(int(lengths.max()), 1)
        tokens = torch.zeros(len(items), width, dtype=torch.long, device=self.device)
        for i, (row, _) in enumerate(items):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        pos = torch.arange(width, device=self.device)[None, :]
        mask = pos < lengths[:, None]
        first = torch.tensor([k for _, k in items], device=self.device)[:, None]
        logits = self.model(input_ids=tokens, attention_mask=mask.long()).logits.float()
        scored = mask[:, 1:] & (pos[:, 1:] >= first)
        targets = tokens[:, 1:].masked_fill(~scored, -100)
        token_losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=-100)
        sums = token_losses.double().sum(dim=1).tolist()
        counts = scored.sum(dim=1).tolist()
        nexts = logits[torch.arange(len(items), device=self.device), (lengths - 1).clamp(min=0)].argmax(dim=-1)
        nexts = torch.where(lengths > 0, nexts, torch.full_like(nexts, -1)).tolist()
        return list(zip(sums, counts, nexts, strict=True))

    # ---- generation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _generate(self, rows, max_new: int, temperature: float, top_p: float, seed: int) -> list[list[int]]:
        """Rows in left-padded batches through `generate`; each row's ids end at its first eos (included)."""
        if max_new >= self.positions:
            raise ValueError(f"max_new_tokens={max_new} must be below the model's {self.positions} positions")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature must be >= 0 (0 = greedy) and top_p in (0, 1]; got {temperature}, {top_p}")
        greedy = {"do_sample": False}
        sample = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else greedy
        )
        config = self.model.generation_config
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        eos = {int(e) for e in eos if e is not None}
        pad = config.pad_token_id if config.pad_token_id is not None else min(eos, default=0)
        contexts = [row[-(self.positions - max_new) :] for row in rows]
        todo = [i for i, c in enumerate(contexts) if c]  # an empty row has nothing to continue
        out: list[list[int]] = [[] for _ in rows]
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the seed is the request's; the server's RNG is left alone
            torch.manual_seed(seed)
            for start in range(0, len(todo), BATCH_SIZE):
                batch = [contexts[i] for i in todo[start : start + BATCH_SIZE]]
                width = max(len(c) for c in batch)
                ids = torch.tensor([[pad] * (width - len(c)) + c for c in batch], device=self.device)
                mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in batch], device=self.device)
                gen = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pad, **sample
                )
                for i, new in zip(todo[start : start + BATCH_SIZE], gen[:, width:].tolist(), strict=True):
                    stop = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
                    out[i] = new[:stop]  # a finished row is padded by generate until the batch ends
        return out


# MLflow's models-from-code loader runs this file under a module name of its own and takes the model set here.
# Imported as `components.adapters.registry.serving` (for SIGNATURE and requirements), it leaves MLflow's global alone.
if __name__ != "components.adapters.registry.serving":
    set_model(CausalLMScorer())
