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


def _figure_markdown(fig, title: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


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
