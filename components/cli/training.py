"""`amr train`, `amr evaluate` and `amr bench forgetting`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from components.cli.base import app, bench_app, err, exits_on, open_line, out, settings
from components.core.config import Settings
from components.core.text import TokenizerMismatch


def _train_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
    )


@app.command()
def train(
    ctx: typer.Context,
    drop: str | None = typer.Option(None, "--drop", help="Drop to train on (default: the next untrained one)."),
    strategy: str | None = typer.Option(None, "--strategy", help="none | uniform | balanced | amr (default: params)."),
    line_name: str = typer.Option("main", "--line", help="Model line (one continually trained model)."),
    nproc: int | None = typer.Option(
        None, "--nproc", help="Data-parallel processes under torchrun (default: train.nproc); gloo on CPU, NCCL on GPU."
    ),
) -> None:
    """Train the line's model on the next (or given) ingested drop with replay, then evaluate it."""
    from components.adapters.locks import refresh_lock

    cfg = settings(ctx, **{"replay.strategy": strategy, "train.nproc": nproc})
    with exits_on(TokenizerMismatch), refresh_lock(cfg.home):  # one writer of the home's lines at a time; busy: exit 3
        _train(cfg, line_name, drop)


def _train(cfg: Settings, line_name: str, drop: str | None) -> None:
    from components.adapters.memory import Memory
    from components.evaluation import evaluate_line
    from components.training.compat import check_model
    from components.training.loop import train_drop

    line = open_line(cfg, line_name)
    memory = Memory.open(cfg)
    todo = [d for d in memory.ingested() if d not in line.trained]
    if drop is None and not todo:
        out.print(f"line {line_name} has trained on every ingested drop ({len(line.trained)}); nothing to do")
        return
    target = drop or todo[0]
    check_model(cfg, memory.meta(), memory.tokenizer_identity(), line.model_dir)  # a mismatch: one line, exit 1
    if cfg.train.nproc > 1:
        from components.training.launcher import launch

        err.print(f"train {target} ({cfg.replay.strategy}) on {cfg.train.nproc} processes (torchrun)")
        result = launch(cfg, line, target)
    else:
        with _train_progress(err.is_terminal) as bars:
            task = bars.add_task(f"train {target} ({cfg.replay.strategy})", total=None)
            result = train_drop(
                cfg, memory, line, target, progress=lambda s, n: bars.update(task, completed=s, total=n)
            )
    ev = evaluate_line(cfg, memory, line)
    out.print(
        f"trained {target}: {result.steps} steps, {result.new_sequences} new + {result.replay_sequences} replay "
        f"sequences, final loss {result.final_loss:.4f}, {result.wall_seconds:.1f}s"
        + (f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else "")
    )
    print_eval(ev.matrix, ev.forgetting, ev.artifacts["png"])


def print_eval(m, f, png: Path) -> None:
    """The loss matrix L[t][j] and the forgetting figures of its last row."""
    table = Table(title="held-out loss L\\[t]\\[j] (nats/token); row t = after training drop t")
    table.add_column("after")
    for d in m.drops:
        table.add_column(d, justify="right")
    for label, row in zip(m.rows, m.values, strict=True):
        table.add_row(label, *("-" if v != v else f"{v:.4f}" for v in row))
    out.print(table)
    out.print(
        f"forgetting avg {f.avg:.4f}  max {f.max:.4f}  relative avg {f.rel_avg:.4f}  plasticity {f.plasticity:.4f}"
    )
    if f.vs_base:  # a pretrained line: the last row against the (base) row, per drop
        out.print("vs base  " + "  ".join(f"{d} {v:+.2%}" for d, v in f.vs_base.items()), highlight=False)
    out.print(f"heatmap: {png}")


@app.command()
def evaluate(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    line_name: str = typer.Option("main", "--line"),
) -> None:
    """Held-out loss of every trained drop: the loss matrix and the forgetting table."""
    from dataclasses import asdict

    from components.adapters.locks import refresh_lock
    from components.adapters.memory import Memory
    from components.evaluation import evaluate_line

    cfg = settings(ctx)
    with exits_on(ValueError), refresh_lock(cfg.home):  # it writes the line's matrix: one writer at a time
        ev = evaluate_line(cfg, Memory.open(cfg), open_line(cfg, line_name))
    if as_json:
        print(
            json.dumps(
                {
                    "loss_matrix": ev.matrix.to_dict(),
                    "forgetting": asdict(ev.forgetting),
                    "artifacts": {k: str(v) for k, v in ev.artifacts.items()},
                },
                indent=2,
                default=str,
            )
        )
    else:
        print_eval(ev.matrix, ev.forgetting, ev.artifacts["png"])


@bench_app.command("forgetting")
def bench_forgetting_cmd(
    ctx: typer.Context,
    stream_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A directory of drops, in name order."),
    strategies: str = typer.Option(
        "none,uniform,balanced,amr,odm", help="Comma-separated strategies; variants as amr+uniform_floor=0.3."
    ),
    out_file: Path = typer.Option(Path("forgetting.json"), "--out", help="JSON report; .md and .png beside it."),
    seeds: str = typer.Option("", help="Comma-separated seeds (train and replay); default: train.seed."),
) -> None:
    """Train every strategy through the same stream at equal compute and compare forgetting."""
    from components.refresh.bench import bench_forgetting

    cfg = settings(ctx)
    with exits_on(ValueError):
        bench_forgetting(
            cfg,
            stream_dir,
            [s.strip() for s in strategies.split(",") if s.strip()],
            out_file,
            log=lambda m: err.print(m, highlight=False),
            seeds=[int(x) for x in seeds.split(",") if x.strip()],
        )
    out.print(out_file.with_suffix(".md").read_text())
    out.print(f"wrote {out_file}, {out_file.with_suffix('.md')}, {out_file.with_suffix('.png')}")
