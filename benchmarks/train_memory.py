"""Memory and time of one training step of a pretrained-shaped model (not in CI): what `train.grad_accum` and
`train.gradient_checkpointing` buy.

    python benchmarks/train_memory.py [--hidden 256] [--layers 4] [--context 256] [--steps 3]

A `LlamaForCausalLM` with SmolLM2's vocabulary (49,152) and SmolLM2-135M's head size (64) at a smaller width and
depth, random weights saved as a local model directory, stepped by amr's `Trainer` on a batch of 16 sequences of
real text tokens (ids from the bytes of Python's sources: the step's cost does not depend on which ids). Each
setting runs in a fresh process (peak RSS is a high-water mark), on CPU: the step time (median of `--steps`, after
one warm-up step), the process's peak RSS and its increase over the RSS after the model was built, and the CPU
seconds of the whole process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_info, markdown_table, peak_rss_mb, rss_mb, run_isolated, write_results

from components.core.config import TrainConfig
from components.training.model import load_model
from components.training.trainer import Trainer

SETTINGS = [(1, False), (4, False), (1, True), (4, True)]  # (grad_accum, gradient_checkpointing)
VOCAB, BATCH = 49_152, 16


def save_model(out: Path, hidden: int, layers: int, context: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = hidden // 64
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
    )
    LlamaForCausalLM(config).save_pretrained(out)


def one_setting(model_dir: str, context: int, accum: int, checkpointing: bool, steps: int) -> dict:
    cpu0 = time.process_time()
    cfg = TrainConfig(model=model_dir, grad_accum=accum, gradient_checkpointing=checkpointing, device="cpu")
    trainer = Trainer(load_model(Path(model_dir)), cfg, total_steps=steps + 1)
    raw = Path(os.__file__).read_bytes()[: BATCH * context]
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long().view(BATCH, context)
    lengths = torch.full((BATCH,), context)
    base = rss_mb()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.step(tokens, lengths)
        times.append(time.perf_counter() - t0)
    return {
        "grad_accum": accum,
        "gradient_checkpointing": checkpointing,
        "step_seconds_median": round(statistics.median(times[1:]), 3),
        "rss_after_build_mb": round(base, 1),
        "step_peak_increase_mb": round(peak_rss_mb() - base, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "final_loss": trainer.last_stats["loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    info = machine_info(("torch", "transformers"))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp), args.hidden, args.layers, args.context)
        wall0 = time.perf_counter()
        rows = [run_isolated(one_setting, tmp, args.context, a, c, args.steps) for a, c in SETTINGS]
        wall = time.perf_counter() - wall0
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "wall_seconds": wall, "rows": rows}
    payload["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    headers = ["grad_accum", "checkpointing", "step s (median)", "step peak RSS increase MB", "CPU s", "loss"]
    table = [
        [r["grad_accum"], r["gradient_checkpointing"], r["step_seconds_median"], r["step_peak_increase_mb"]]
        + [r["cpu_seconds"], f"{r['final_loss']:.4f}"]
        for r in rows
    ]
    md = (
        f"# One training step, batch {BATCH} x {args.context} tokens, Llama {args.layers} x {args.hidden}, "
        f"vocabulary {VOCAB}, CPU\n\n{markdown_table(headers, table)}\n\n"
        f"load average before {info['load_average_1_5_15']}, after {payload['load_average_after']}; "
        f"{info['cpu_count']} cores ({info['cpu_model']}); wall {wall:.0f} s for all settings\n"
    )
    write_results(args.out, "train_memory", payload, md)
    print(md)


if __name__ == "__main__":
    main()
