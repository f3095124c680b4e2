"""Turn tools/bench_runtime.py's runs into medians, speed-ups against dense, a table, targets, a chart.

Speed-ups are taken against the dense model of the same model and format in the same run, so
they are ratios of medians measured under the same load. Every number exists on two clocks,
wall and process CPU (tools/bench_runtime_child.py); `clock` picks the one the table, the
targets and the chart use, and the JSON holds both.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

GROUP = ("model", "format", "ratio", "cut")
TARGETS = (  # model, format, ratio, metric, bound, text
    ("smollm2", "gguf-f16", 0.35, "decode_x", 1.4, "SmolLM2 -35% llama.cpp f16 decode >= 1.4x"),
    ("smollm2", "gguf-f16", 0.35, "pp_x", 1.2, "SmolLM2 -35% llama.cpp f16 prompt processing >= 1.2x"),
    ("smollm2", "gguf-f16", 0.35, "size_x", -0.66, "SmolLM2 -35% f16 file size <= 0.66x"),
    ("gemma3", "gguf-f16", 0.5, "decode_x", 1.6, "Gemma-3-270M -50% llama.cpp f16 decode >= 1.6x"),
)


METRICS = ("pp_tok_s", "decode_tok_s", "decode_ms_median", "pp_tok_s_cpu", "decode_tok_s_cpu",
           "decode_cpu_ms_median", "peak_rss")


def summarise(runs: list[dict[str, Any]], clock: str = "cpu") -> list[dict[str, Any]]:
    """One row per (model, format, ratio, cut): medians of the runs, and ratios against dense.

    The unsuffixed pp_tok_s / decode_tok_s / decode_ms_median of a row are on `clock`; the
    `_wall` and `_cpu` variants are both kept.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in GROUP), []).append(run)
    rows = []
    for group in groups.values():
        first = group[0]
        row = {k: first[k] for k in (*GROUP, "label", "vocab", "ffn", "params", "dense_params", "file_bytes")}
        for metric in METRICS:
            row[metric] = statistics.median(r[metric] for r in group)
        for wall, cpu in (("pp_tok_s", "pp_tok_s_cpu"), ("decode_tok_s", "decode_tok_s_cpu"),
                          ("decode_ms_median", "decode_cpu_ms_median")):
            row[f"{wall}_wall"], row[f"{wall}_cpu"] = row[wall], row.pop(cpu)
            row[wall] = row[f"{wall}_{clock}"]
        row["clock"] = clock
        row["runs"] = len(group)
        row["decode_tok_s_all"] = [round(r["decode_tok_s_cpu" if clock == "cpu" else "decode_tok_s"], 2)
                                   for r in group]
        rows.append(row)
    dense = {(r["model"], r["format"]): r for r in rows if r["ratio"] == 0}
    for row in rows:
        base = dense.get((row["model"], row["format"]))
        if base is None:
            continue
        for suffix in ("", "_wall", "_cpu"):
            row[f"decode_x{suffix}"] = row[f"decode_tok_s{suffix}"] / base[f"decode_tok_s{suffix}"]
            row[f"pp_x{suffix}"] = row[f"pp_tok_s{suffix}"] / base[f"pp_tok_s{suffix}"]
            row[f"ms_x{suffix}"] = base[f"decode_ms_median{suffix}"] / row[f"decode_ms_median{suffix}"]
        row["size_x"] = row["file_bytes"] / base["file_bytes"]
        row["rss_x"] = row["peak_rss"] / base["peak_rss"]
        row["params_x"] = row["params"] / row["dense_params"]
    return rows


def _x(row: dict[str, Any], key: str) -> str:
    return f" ({row[key]:.2f}x)" if key in row and row["ratio"] else ""


def markdown_table(rows: list[dict[str, Any]]) -> str:
    clock = rows[0]["clock"] if rows else "cpu"
    head = (f"| model | cut | vocab | ffn | params M | format | file MB | pp tok/s ({clock}) | "
            f"decode tok/s ({clock}) | ms/token ({clock}, median) | decode x (wall) | peak RSS MB |\n"
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        cut = "dense" if r["ratio"] == 0 else f"-{round(r['ratio'] * 100)}%" + (
            "" if r["cut"] == "both" else f" {r['cut']}")
        wall = f"{r['decode_x_wall']:.2f}x" if "decode_x_wall" in r and r["ratio"] else "-"
        lines.append(
            f"| {r['label']} | {cut} | {r['vocab']} | {r['ffn']} | {r['params'] / 1e6:.1f}{_x(r, 'params_x')} | "
            f"{r['format']} | {r['file_bytes'] / 1e6:.1f}{_x(r, 'size_x')} | {r['pp_tok_s']:.1f}{_x(r, 'pp_x')} | "
            f"{r['decode_tok_s']:.1f}{_x(r, 'decode_x')} | {r['decode_ms_median']:.2f}{_x(r, 'ms_x')} | "
            f"{wall} | "
            f"{r['peak_rss'] / 1e6:.0f}{_x(r, 'rss_x')} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Each issue target this run covers, with the measured value and met / NOT met."""
    out = []
    for model, fmt, ratio, metric, bound, text in TARGETS:
        row = next((r for r in rows if (r["model"], r["format"], r["ratio"], r["cut"]) == (model, fmt, ratio, "both")
                    and metric in r), None)
        if row is None:
            continue
        ok = row[metric] <= -bound if bound < 0 else row[metric] >= bound
        out.append(f"target: {text}: measured {row[metric]:.2f}x, {'met' if ok else 'NOT met'}")
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Decode and prompt speed-up against dense, per format, one line per model (x: parameters removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = sorted({r["format"] for r in rows})
    labels = sorted({r["label"] for r in rows})
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(2, len(formats), figsize=(4.2 * len(formats), 7.5), squeeze=False)
    for col, fmt in enumerate(formats):
        for row_i, (metric, title) in enumerate((("decode_x", "decode speed-up"), ("pp_x", "prompt speed-up"))):
            ax = axes[row_i][col]
            for label in labels:
                pts = sorted((1 - r["params_x"], r[metric]) for r in rows
                             if r["format"] == fmt and r["label"] == label and r["cut"] == "both" and metric in r)
                if pts:
                    ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                            color=colours[label])
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_title(f"{fmt}: {title}", fontsize=10)
            ax.set_xlabel("parameters removed (%)")
            ax.set_ylabel("x dense (same run)")
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[label], marker="o", label=label) for label in labels]
    axes[0][0].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
