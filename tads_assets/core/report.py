"""Small helpers that turn tables and distributions into markdown for asset metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np


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
