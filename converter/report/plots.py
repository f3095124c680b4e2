"""The report's PNG plots, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Every plot is a pure function of the collected numbers, saved without a Software or date tag,
so two exports of the same input write byte-identical PNGs. matplotlib is imported here only,
when a report is written, because importing it costs a few tenths of a second.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converter.report.calibration import CoverageCurve, ImportanceMap
from converter.report.components import COMPONENTS, LABELS

PARAMS_PNG = "report_parameters.png"
COVERAGE_PNG = "report_coverage.png"
IMPORTANCE_PNG = "report_ffn_importance.png"
SPLITS_PNG = "report_auto_split.png"
RETENTION_PNG = "report_retention.png"
EXPERT_USE_PNG = "report_expert_use.png"
DPI = 100
BEFORE, AFTER, CHOSEN = "#9aa5b1", "#1f6fb2", "#d1495b"


def _figure(width: float, height: float, left: float = 0.8, bottom: float = 0.6, right: float = 0.15,
            top: float = 0.4) -> tuple[Any, Any]:
    """A figure and one axes placed by fixed margins in inches (an automatic layout costs a second draw)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain text (1, 10, 1k) instead of mathtext, which is slow to lay out."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: _short(v) if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def style() -> Any:
    """matplotlib's default style whatever the user's matplotlibrc says; enter it once for all plots."""
    import matplotlib.style

    return matplotlib.style.context("default")


def _scale(value: int) -> tuple[float, str]:
    for factor, unit in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if value >= factor:
            return factor, unit
    return 1.0, "parameters"


def _short(value: float) -> str:
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


def plot_parameters(params: dict[str, dict[str, int]], path: Path) -> Path:
    """Grouped bars: each component's parameters before and after pruning."""
    before, after = params["before"], params["after"]
    factor, unit = _scale(max(before[c] for c in COMPONENTS))
    fig, ax = _figure(8, 4.5)
    xs = range(len(COMPONENTS))
    width = 0.38
    for shift, values, label, color in ((-width / 2, before, "before", BEFORE), (width / 2, after, "after", AFTER)):
        heights = [values[c] / factor for c in COMPONENTS]
        bars = ax.bar([x + shift for x in xs], heights, width, label=label, color=color)
        ax.bar_label(bars, labels=[_short(values[c]) for c in COMPONENTS], fontsize=8, padding=2)
    labels = [LABELS[c] + (" (tied: 0)" if c == "lm_head" and before[c] == 0 else "") for c in COMPONENTS]
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel(f"parameters ({unit})")
    ax.margins(y=0.15)
    removed = 1 - after["total"] / before["total"] if before["total"] else 0.0
    ax.set_title(f"Parameters by component: {_short(before['total'])} before, {_short(after['total'])} after "
                 f"({100 * removed:.1f}% removed)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_coverage(curve: CoverageCurve, path: Path, candidates: Sequence[int] = ()) -> Path:
    """Share of calibration tokens covered by the N most frequent tokens, with the kept size marked."""
    fig, ax = _figure(8, 4.5)
    ax.plot(curve.sizes, 100 * curve.covered, color=AFTER, label="the N most frequent tokens")
    ax.axvline(curve.vocab_after, color=CHOSEN, linestyle="--", linewidth=1,
               label=f"kept vocabulary: {curve.vocab_after:,} of {curve.vocab_before:,} tokens")
    ax.plot([curve.vocab_after], [100 * curve.kept_coverage], marker="o", color=CHOSEN, linestyle="none",
            label=f"kept tokens cover {100 * curve.kept_coverage:.2f}%")
    others = sorted({v for v in candidates if v != curve.vocab_after})
    if others:
        import numpy as np

        ys = 100 * np.interp(others, curve.sizes, curve.covered)
        ax.plot(others, ys, marker="|", markersize=12, color="#555555", linestyle="none",
                label="other auto-split candidates")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlim(1, curve.vocab_before * 1.05)
    ax.set_ylim(0, 101)
    ax.set_xlabel("vocabulary size N (tokens kept, log scale)")
    ax.set_ylabel("calibration tokens covered (%)")
    ax.set_title("Calibration token mass covered against vocabulary size")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_importance(imp: ImportanceMap, path: Path) -> Path:
    """Heatmap of each layer's sorted channel importance with the cut, beside the kept share per layer."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    layers = imp.sorted_rows.shape[0]
    channels_cut = 100 * (1 - imp.ffn_after / imp.ffn_before)
    width, height = 10.0, max(4.5, 2.6 + 0.12 * layers)
    fig = Figure(figsize=(width, height), dpi=DPI)
    y0, h = 1.55 / height, 1 - 1.95 / height
    heat = fig.add_axes((0.6 / width, y0, 6.2 / width, h))
    bars = fig.add_axes((7.3 / width, y0, 2.4 / width, h), sharey=heat)
    scale = fig.add_axes((1.6 / width, 0.6 / height, 4.2 / width, 0.12 / height))
    image = heat.imshow(imp.sorted_rows.clip(1e-4, 1), aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=LogNorm(1e-4, 1), extent=(0, imp.ffn_before, layers - 0.5, -0.5))
    heat.axvline(imp.ffn_after, color=CHOSEN, linewidth=1.5)
    right = imp.ffn_after > 0.6 * imp.ffn_before
    heat.annotate(f"cut: keep {imp.ffn_after:,} of {imp.ffn_before:,}", (imp.ffn_after, -0.5),
                  xytext=(-4 if right else 4, -4), textcoords="offset points", fontsize=8, va="top",
                  ha="right" if right else "left", color="white",
                  bbox={"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.6, "linewidth": 0})
    heat.yaxis.set_major_locator(MaxNLocator(integer=True))
    heat.set_xlabel("FFN channels of the layer, sorted by importance (rank)")
    heat.set_ylabel("layer")
    heat.set_title(f"FFN channel importance ({imp.method}), per layer")
    bar = fig.colorbar(image, cax=scale, orientation="horizontal")
    bar.set_label("channel importance / the layer's largest (log scale)", fontsize=9)
    _plain_log_ticks(bar.ax.xaxis)
    cut = [100 * (1 - s) for s in imp.kept_share]
    bars.barh(range(layers), cut, color=CHOSEN, height=0.8, label="importance cut")
    bars.axvline(channels_cut, color="#555555", linestyle="--", linewidth=1,
                 label=f"channels cut ({imp.ffn_before - imp.ffn_after:,}/{imp.ffn_before:,})")
    bars.set_xlim(0, max(channels_cut, *cut) * 1.15 or 1)
    bars.tick_params(labelleft=False)
    bars.set_xlabel("share of the layer's importance cut (%)", fontsize=9)
    bars.set_title(f"importance cut (mean {sum(cut) / layers:.2f}%)")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / (h * height)), fontsize=8, frameon=False)
    bars.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_splits(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Held-out bits per byte of every auto-split candidate against its vocabulary size, the winner marked."""
    from matplotlib.ticker import FuncFormatter

    measured = [r for r in rows if r["bits_per_byte"] is not None]
    fig, ax = _figure(8, 4.5)
    ax.plot([r["vocab"] for r in measured], [r["bits_per_byte"] for r in measured], marker="o", color=AFTER,
            label="candidate (vocab, FFN) meeting the budget")
    for r in measured:
        ax.annotate(f"FFN {r['ffn']:,}", (r["vocab"], r["bits_per_byte"]), xytext=(0, 8),
                    textcoords="offset points", ha="center", fontsize=8)
    for r in measured:
        if r["chosen"]:
            ax.plot([r["vocab"]], [r["bits_per_byte"]], marker="*", markersize=16, color=CHOSEN,
                    linestyle="none", label=f"chosen: vocab {r['vocab']:,}, FFN {r['ffn']:,}, "
                                            f"{r['bits_per_byte']:.4f} bits/byte")
    ax.margins(x=0.08, y=0.2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("vocabulary size kept (tokens)")
    ax.set_ylabel("held-out bits per byte (lower is better)")
    ax.set_title("Auto-split: each candidate split of the budget, measured on held-out text")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_retention(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per auto-split candidate: held-out calibration bits per byte against general retention, the winner starred.

    Left, the pruned/dense bits-per-byte ratio on the dense model's everyday answers (1 = nothing
    lost); right, the share of those answers' bytes that fall in dropped tokens.
    """
    from matplotlib.figure import Figure

    measured = [r for r in rows if r["bits_per_byte"] is not None and r.get("retention", {}).get("measured")]
    width, height = 11.0, 4.5
    fig = Figure(figsize=(width, height), dpi=DPI)
    panels = (("ratio", 1.0, "answer bits per byte, pruned / dense (x)", "Everyday answers: bits per byte vs dense"),
              ("dropped_share", 100.0, "answer bytes in dropped tokens (%)",
               "Everyday answers: bytes in dropped tokens"))
    xs = [r["bits_per_byte"] for r in measured]
    for index, (key, scale, ylabel, title) in enumerate(panels):
        ax = fig.add_axes(((0.75 + index * 5.4) / width, 1.1 / height, 4.4 / width, 2.9 / height))
        ys = [scale * r["retention"][key] for r in measured]
        ax.plot(xs, ys, marker="o", color=AFTER, linestyle="none", label="candidate (vocab, FFN)")
        for r, x, y in zip(measured, xs, ys):
            ax.annotate(f"{r['vocab']:,} / {r['ffn']:,}", (x, y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=7)
            if r["chosen"]:
                ax.plot([x], [y], marker="*", markersize=16, color=CHOSEN, linestyle="none", label="chosen")
        if key == "ratio":
            ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1, label="dense model")
        ax.margins(x=0.12, y=0.25)
        ax.set_xlabel("held-out calibration bits per byte (lower is better)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(loc="upper center", bbox_to_anchor=(1.1, -0.2), ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Auto-split candidates: domain cost against general-capability retention (labels: vocab / FFN)",
                 fontsize=11)
    return _save(fig, path)


def plot_expert_use(tokens: Sequence[Sequence[int]], path: Path) -> Path:
    """Heat map of the calibration tokens routed to each expert (columns) of each layer (rows); an expert
    that received none is crossed out."""
    layers, experts = len(tokens), len(tokens[0])
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(min(12.0, 3.5 + 0.3 * experts), min(10.0, 2.6 + 0.3 * layers), left=0.8, right=1.2)
    image = ax.imshow(tokens, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    unused = [(e, layer) for layer, row in enumerate(tokens) for e, n in enumerate(row) if n == 0]
    if unused:
        ax.scatter([e for e, _ in unused], [layer for _, layer in unused], marker="x", color=CHOSEN, s=40,
                   label="no token")
        ax.legend(loc="upper right", fontsize=8, bbox_to_anchor=(1.0, 1.12))
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label("tokens routed")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title("Calibration tokens routed per expert", fontsize=10, loc="left")
    return _save(fig, path)
