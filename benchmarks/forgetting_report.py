"""The issue-12 targets, the markdown report and the plot of `benchmarks/forgetting.py` (a script helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import markdown_table
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

HELD = "held-out (all)"


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _ratio(s: dict, a: str, b: str, m: str) -> float | None:
    return round(s[a][m] / s[b][m], 4) if a in s and b in s and s[b][m] else None


def targets(summary: dict, results: dict, amr: str = "amr") -> dict[str, dict]:
    """Issue 12's targets over the held-out streams, each with its value and whether it is met."""
    if HELD not in summary:
        return {}
    s = summary[HELD]["strategies"]
    out = {}
    for m, short in (("avg_forgetting", "avg"), ("max_forgetting", "max")):
        r = _ratio(s, amr, "uniform", m)
        out[f"{amr}/uniform {short} forgetting <= 0.90"] = {"value": r, "met": r is not None and r <= 0.90}
        for rival in ("balanced", "odm"):
            if rival in s and amr in s:
                out[f"{amr} {short} forgetting < {rival}"] = {
                    "value": round(s[amr][m] - s[rival][m], 5),
                    "met": s[amr][m] < s[rival][m],
                }
    worst = max(
        (_div(r["runs"][amr]["avg_forgetting"], r["runs"]["uniform"]["avg_forgetting"]), name, r["seed"])
        for name, rs in results.items()
        if name != "tuning"
        for r in rs
    )
    out[f"worst held-out run {amr}/uniform avg <= 1.02"] = {
        "value": round(worst[0], 4),
        "met": worst[0] <= 1.02,
        "run": f"{worst[1]} seed {worst[2]}",
    }
    r = _ratio(s, amr, "uniform", "final_new_loss")
    out[f"{amr}/uniform final new-drop loss <= 1.01"] = {"value": r, "met": r is not None and r <= 1.01}
    r = _ratio(s, amr, "none", "cpu_seconds")
    out[f"{amr}/none CPU seconds <= 1.03"] = {"value": r, "met": r is not None and r <= 1.03}
    return out


def _f(x, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def _strategy_table(group: dict) -> str:
    s, paired = group["strategies"], group["paired_vs_uniform"]
    u = s.get("uniform")
    rows = []
    for name, r in s.items():
        p = paired.get(name, {})
        rows.append(
            [f"`{name}`"]
            + [f"{_f(r[m])} ± {_f(r['sd'][m])}" for m in ("avg_forgetting", "max_forgetting")]
            + [
                _f(_div(r["avg_forgetting"], u["avg_forgetting"]), ".3f") if u else "",
                _f(_div(r["max_forgetting"], u["max_forgetting"]), ".3f") if u else "",
            ]
            + [f"{_f(p['avg_forgetting']['mean'], '+.4f')} ± {_f(p['avg_forgetting']['sd'])}" if p else ""]
            + [_f(r["final_new_loss"]), f"{r['cpu_seconds']:.0f} / {r['wall_seconds']:.0f}"]
        )
    heads = ["strategy", "avg forgetting", "max forgetting", "avg / uniform", "max / uniform"]
    heads += ["paired avg - uniform", "new-drop loss", "CPU / wall s"]
    return markdown_table(heads, rows)


def _per_drop(runs: list[dict]) -> str:
    """Mean over seeds of each past drop's forgetting per strategy, and the amr/odm replay share per drop."""
    names = list(runs[0]["runs"])
    drops = runs[0]["runs"][names[0]]["drops"][:-1]
    rows = []
    for d in drops:
        row = [d] + [_f(np.mean([r["runs"][n]["forgetting_per_drop"][d] for r in runs])) for n in names]
        for n in names:
            if n.startswith(("amr", "odm")):
                shares = []
                for r in runs:
                    last = r["runs"][n]["refreshes"][-1]["replay_by_drop"]
                    shares.append(last.get(d, 0) / max(1, sum(last.values())))
                row.append(_f(float(np.mean(shares)), ".1%"))
        rows.append(row)
    heads = ["past drop"] + [f"`{n}`" for n in names] + [f"`{n}` share" for n in names if n.startswith(("amr", "odm"))]
    return markdown_table(heads, rows)


def render(result: dict) -> str:
    k, m = result["knobs"], result["machine"]
    parts = ["# Forgetting protocol (issue 12)", ""]
    parts.append(
        f"Streams of {k['mb']} MB drops of real text from this machine; {k['steps']} steps x {k['batch_size']}"
        f" sequences per drop for every strategy; model gpt2-tiny, {k['n_layer']} layers, width {k['n_embd']},"
        f" context {k['context_length']} bytes; replay fraction {k['replay_fraction']}, arms `{k['arms']}`;"
        f" seeds {', '.join(map(str, k['seeds']))}. The first drop is trained once per stream and seed and shared."
        " Forgetting of drop j = its held-out loss now minus its best earlier loss (nats/token), after the last"
        " refresh. CPU / wall seconds: training of drops 2..n, summed, mean over seeds."
    )
    done = {name: sorted(r["seed"] for r in rs) for name, rs in result["results"].items()}
    parts += ["", "Runs (stream: seeds): " + "; ".join(f"{n}: {', '.join(map(str, s))}" for n, s in done.items()) + "."]
    if result.get("partial"):
        parts.append("**Partial**: the run was cut short (deadline); only the (stream, seed) jobs above finished.")
    parts += ["", "## Targets (held-out streams, means over streams and seeds)", ""]
    parts.append(
        markdown_table(
            ["target", "value", "met"],
            [[n, _f(t["value"]), {True: "yes", False: "**no**"}[t["met"]]] for n, t in result["targets"].items()],
        )
    )
    for name, group in result["summary"].items():
        parts += ["", f"## {name} ({group['n_runs']} runs)", ""]
        if name in result["streams"]:
            kinds = ", ".join(
                f"{d} ({v['documents']} docs, {v['text_bytes'] / 1e6:.2f} MB)"
                for d, v in result["streams"][name].items()
            )
            parts += [f"Drops: {kinds}.", ""]
        parts.append(_strategy_table(group))
        if name in result["results"]:
            parts += [
                "",
                "Forgetting per past drop (mean over seeds) and the replay share per drop in the last refresh:",
                "",
            ]
            parts.append(_per_drop(result["results"][name]))
    loads = [(r["load_1min_start"], r["load_1min_end"]) for rs in result["results"].values() for r in rs]
    parts += [
        "",
        f"How it was run: `python benchmarks/forgetting.py {' '.join(result['argv'])}`, {result['total_s']:.0f} s wall,"
        f" {result['total_cpu_s']:.0f} CPU s (all processes), {k['workers']} worker(s) of 1 torch thread on"
        f" {m['cpu_count']} cores ({m['cpu_model']}) shared with other work:"
        f" 1-min load {result['load_average_start'][0]}"
        f" at the start, {result['load_average_end'][0]} at the end, {min(x for lo in loads for x in lo):.1f}-"
        f"{max(x for lo in loads for x in lo):.1f} at job starts/ends. CPU only (no GPU). Python {m['python']},"
        f" torch {m['packages']['torch']}, lancedb {m['packages']['lancedb']}.",
    ]
    return "\n".join(parts) + "\n"


def save_plot(result: dict, path: Path) -> None:
    """Bars: each strategy's mean avg and max forgetting over uniform's, per stream (1 = uniform)."""
    groups = result["summary"]
    names = [n for n in next(iter(groups.values()))["strategies"] if n not in ("none", "uniform")]
    fig = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, m in enumerate(("avg_forgetting", "max_forgetting")):
        ax = fig.add_subplot(1, 2, i + 1)
        x = np.arange(len(groups))
        w = 0.8 / max(1, len(names))
        for j, n in enumerate(names):
            vals = [_div(g["strategies"][n][m], g["strategies"]["uniform"][m]) for g in groups.values()]
            ax.bar(x + j * w - 0.4 + w / 2, vals, w, label=n)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, list(groups), rotation=20, ha="right", fontsize="small")
        ax.set_title(f"{m.replace('_', ' ')} / uniform")
    ax.legend(fontsize="x-small")
    fig.savefig(path, format="png", dpi=90)
