"""Small helpers that turn tables and distributions into markdown for asset metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from tads_assets.core.io.formats import decode_rgb


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, max_rows: int = 50) -> str:
    """A GitHub-flavoured markdown table of dict rows (cells escaped, long cells cut)."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())

    def cell(v: object) -> str:
        if isinstance(v, float):
            text = f"{v:.4g}"
        else:
            text = "" if v is None else str(v)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"\n_{len(rows) - max_rows} more rows not shown_")
    return "\n".join(lines)


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _figure_markdown(fig, title: str) -> str:
    return png_markdown(_figure_png(fig), title)


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 3.2), dpi=90)


def line_plot_markdown(values: Sequence[float], title: str, xlabel: str, ylabel: str) -> str:
    fig, ax = _axes()
    ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _figure_markdown(fig, title)


def multi_line_plot_markdown(curves: Mapping[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
                             reference: float | None = None) -> str:
    """One line per named curve of (x, y) points, with an optional horizontal reference line, as inline PNG markdown."""
    fig, ax = _axes()
    for name, points in curves.items():
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, ys, marker="o", markersize=2, label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=f"target {reference:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _figure_markdown(fig, title)


def histogram_markdown(series: Mapping[str, np.ndarray], title: str, xlabel: str, bins: int = 30) -> str:
    """Histograms of one or more value arrays, as an inline PNG inside markdown."""
    fig, ax = _axes()
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{name} (n={values.size})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    if len(series) > 1:
        ax.legend()
    return _figure_markdown(fig, title)


def bar_plot_png(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str,
                 errors: Sequence[float] | None = None, reference: float | None = None) -> bytes:
    """A bar chart as PNG bytes (optionally with error bars and a dashed reference line, e.g. chance)."""
    fig, ax = _axes()
    ax.bar(range(len(values)), values, yerr=errors, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _figure_png(fig)


def png_markdown(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def grouped_bars_markdown(labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str, ylabel: str) -> str:
    """Side-by-side bars per label (e.g. each labelling function's coverage, overlaps, conflicts, learned accuracy)."""
    fig, ax = _axes()
    fig.set_size_inches(max(6.0, 0.55 * len(labels) + 2), 3.6)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return _figure_markdown(fig, title)


def sample_grid_markdown(rows: Mapping[str, Sequence[tuple[bytes, str, float]]], title: str, score_name: str,
                         thumb_px: int = 96) -> str:
    """A grid of samples like the paper's Figure 6: one row per group (e.g. highest and lowest scored), each cell
    the image with its score and the start of its caption. `rows` maps a row label to (image bytes, caption, score)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max((len(v) for v in rows.values()), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.55 * n_cols, 1.9 * len(rows)), dpi=90, squeeze=False)
    for r, (label, samples) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(samples):
                continue
            blob, caption, score = samples[c]
            try:
                image = decode_rgb(blob)
                image.thumbnail((thumb_px, thumb_px))
                ax.imshow(image)
            except Exception as err:  # an unreadable image is shown as such, not dropped from the grid
                ax.text(0.5, 0.5, f"unreadable:\n{type(err).__name__}", ha="center", va="center", fontsize=6)
            text = textwrap.shorten(caption or "", 60, placeholder="…")
            ax.set_title(f"{score_name}={score:.3f}\n" + "\n".join(textwrap.wrap(text, 22)[:2]), fontsize=5.5)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=7)
    fig.suptitle(title, fontsize=8)
    return _figure_markdown(fig, title)
