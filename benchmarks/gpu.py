"""GPU training benchmark (not in CI): tokens/s and model FLOPs utilisation of `none` against `amr`, side by side.

    python benchmarks/gpu.py [--steps 60] [--warmup 10] [--batch-size 16] [--context 1024] [--out benchmarks/results]
    python benchmarks/gpu.py --device cpu --tiny        # smoke test of the same code path, without a GPU

A GPT-2-small-sized model (12 layers, 768 wide, 12 heads; the byte tokenizer's vocabulary instead of GPT-2's
50257) trains on a new drop of real text after a past drop, through the real loop (`train_drop`): batches
prefetched from LanceDB in a background thread into pinned host memory, copied asynchronously, bf16 autocast.
`none` is plain fine-tuning; `amr` fills a quarter of every batch with replayed sequences chosen by the bandit, so
the ratio amr/none is what adaptive replay costs in throughput at equal compute.

Measured over the steps after `--warmup` (CUDA start-up, allocator growth):
  tokens/s   predicted (real, non-padding) tokens per second
  MFU        achieved model FLOPs / the device's peak dense bf16 FLOPs, with the PaLM / nanoGPT count of
             6 N + 12 L d T FLOPs per position (N parameters without position embeddings, L layers, d width,
             T context), over every position of the batch (padding is computed too)
  data wait  share of the time the trainer waited on the prefetcher; ~0 means LanceDB keeps up
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_info, markdown_table, real_documents, write_drop, write_results

from components.adapters.lines import Line
from components.adapters.memory import Memory
from components.core.config import Settings, load_settings
from components.ingest import ingest_source
from components.training.loop import train_drop
from components.training.model import build_model

# Peak dense bf16 tensor-core FLOP/s (vendor datasheets), longest name match first.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
}
PAST, NEW = "a-past", "b-new"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=60, help="Measured steps (after the warm-up).")
    p.add_argument("--warmup", type=int, default=10, help="Steps not measured.")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--drop-mb", type=float, default=4.0, help="Text per drop (past and new).")
    p.add_argument("--peak-tflops", type=float, default=None, help="Override the device's peak bf16 TFLOP/s.")
    p.add_argument("--tiny", action="store_true", help="A tiny model and short run: a smoke test, not a benchmark.")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default=None, help="Result file stem (default gpu, or gpu-smoke with --tiny).")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.batch_size, args.context = 6, 2, 8, 128
        args.layers, args.width, args.heads, args.drop_mb = 2, 64, 2, 0.3
    args.name = args.name or ("gpu-smoke" if args.tiny else "gpu")
    return args


def settings_for(args: argparse.Namespace, home: Path) -> Settings:
    steps = args.warmup + args.steps
    cfg = load_settings(
        None,
        **{
            "ingest.context_length": args.context,
            "ingest.clusters_per_drop": 4,
            "train.model": "gpt2-tiny",  # built from the config below: GPT-2 small's shape
            "train.n_layer": args.layers,
            "train.n_embd": args.width,
            "train.n_head": args.heads,
            "train.batch_size": args.batch_size,
            "train.grad_accum": args.grad_accum,
            "train.max_steps": steps,
            "train.epochs": 1000.0,  # the step cap, not the drop size, sets the budget
            "train.warmup_steps": min(10, steps // 2),
            "train.checkpoint_every": steps + 1,  # checkpoint I/O is not what is measured
            "train.device": args.device,
        },
    )
    cfg.home = home
    return cfg


def build_memory(cfg: Settings, work: Path, drop_mb: float) -> None:
    """Two drops of different real text, ingested into a fresh memory."""
    past, _ = real_documents(int(drop_mb * 1e6), kinds=("python", "man-pages"))
    new, _ = real_documents(int(drop_mb * 1e6), kinds=("c-headers", "licenses"))
    write_drop(work / "drops", PAST, past)
    write_drop(work / "drops", NEW, new)
    results = ingest_source(cfg, str(work / "drops"), show_progress=False)
    bad = [r for r in results if r.status != "ingested"]
    if bad:
        raise RuntimeError(f"ingest failed: {[(r.drop_id, r.message) for r in bad]}")


def flops_per_position(cfg: Settings, meta: dict) -> tuple[float, int]:
    model = build_model(cfg.train, meta["vocab_size"], meta["context_length"], meta["eos_id"], meta["pad_id"])
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    t = cfg.train
    return 6 * n + 12 * t.n_layer * t.n_embd * meta["context_length"], n


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    match = max((k for k in PEAK_BF16 if k in name), key=len, default=None)
    return (PEAK_BF16[match], name) if match else (None, name)


def run_strategy(cfg: Settings, strategy: str, args: argparse.Namespace, per_position: float, peak: float | None):
    """A fresh line: the past drop for two unmeasured steps, then the new drop with `strategy`, timed per step."""
    memory, line = Memory.open(cfg), Line(cfg.home, strategy)
    warm = cfg.model_copy(deep=True)
    warm.train.max_steps = 2
    train_drop(warm, memory, line, PAST, "none")
    marks: list[tuple[float, float, float]] = []  # (time after the step, predicted tokens, data wait)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train_drop(
        cfg,
        memory,
        line,
        NEW,
        strategy,
        on_step=lambda step, s: marks.append((time.perf_counter(), s["tokens"], s["data_wait_s"])),
    )
    t = np.array([m[0] for m in marks])
    window = t[-1] - t[args.warmup - 1]
    steps = len(marks) - args.warmup
    tokens = sum(m[1] for m in marks[args.warmup :])
    positions_per_s = steps * cfg.train.batch_size * cfg.ingest.context_length / window
    return {
        "strategy": strategy,
        "steps_measured": steps,
        "replay_sequences_per_step": result.replay_sequences // result.steps,
        "tokens_per_s": round(tokens / window, 1),
        "step_ms_p50": round(float(np.median(np.diff(t[args.warmup - 1 :]))) * 1e3, 2),
        "mfu": round(per_position * positions_per_s / peak, 4) if peak else None,
        "data_wait_share": round(sum(m[2] for m in marks[args.warmup :]) / window, 4),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None,
        "final_loss": round(result.final_loss, 4),
    }


def report(args: argparse.Namespace, rows: list[dict], n_params: int, per_position: float, device: str) -> str:
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    head = ["strategy", "tokens/s", "MFU", "step ms (p50)", "data wait", "replay/step", "peak GPU GB"]
    table = markdown_table(
        head,
        [
            [
                r["strategy"],
                f"{r['tokens_per_s']:,.0f}",
                "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                r["step_ms_p50"],
                f"{100 * r['data_wait_share']:.1f}%",
                r["replay_sequences_per_step"],
                r["peak_gpu_memory_gb"] if r["peak_gpu_memory_gb"] is not None else "-",
            ]
            for r in rows
        ],
    )
    title = "GPU training throughput: none vs amr" + (" (smoke run, tiny model: no measurement)" if args.tiny else "")
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    return (
        f"# {title}\n\n"
        f"Device: {device}. Model: {args.layers} layers x {args.width} wide, {args.heads} heads, "
        f"{n_params / 1e6:.1f}M parameters, context {args.context}, batch {args.batch_size} (grad accum "
        f"{args.grad_accum}), {precision}; {per_position / 1e9:.3f} GFLOPs per position. "
        f"{args.steps} steps measured after {args.warmup}.\n\n{table}\n\n"
        f"**amr / none tokens/s: {ratio:.3f}**\n"
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --tiny for a smoke test", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="amr-gpu-bench-") as tmp:
        work = Path(tmp)
        cfg = settings_for(args, work / "home")
        build_memory(cfg, work, args.drop_mb)
        per_position, n_params = flops_per_position(cfg, Memory.open(cfg).meta())
        peak, device_name = peak_flops(device, args.peak_tflops)
        rows = [run_strategy(cfg, s, args, per_position, peak) for s in ("none", "amr")]
    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": device_name,
        "peak_flops": peak,
        "parameters": n_params,
        "flops_per_position": per_position,
        "strategies": {r["strategy"]: r for r in rows},
        "amr_over_none_tokens_per_s": round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 4),
        "machine": machine_info(("torch", "transformers", "lancedb")),
    }
    markdown = report(args, rows, n_params, per_position, device_name)
    json_path, md_path = write_results(args.out, args.name, payload, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(math.isfinite(r["final_loss"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
