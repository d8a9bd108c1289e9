"""Plots and grids: loss curves (raw + smoothed), adherence-vs-minutes curves, labelled image grids."""

from __future__ import annotations

from pathlib import Path


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def save_loss_curve(points: list[tuple[float, float]], path: Path, title: str = "", xlabel: str = "step") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(xs, ys, color="#c4b5fd", linewidth=0.8, label="loss")
    if ys:
        ax.plot(xs, smooth(ys), color="#6d28d9", linewidth=2, label="smoothed")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_series_plot(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str,
                     ylabel: str) -> Path:
    """Several named lines on one chart (e.g. adherence per category against training minutes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def image_grid(rows: list[list], row_labels: list[str], col_labels: list[str], pad: int = 4):
    """Lay PIL images out in a labelled grid (an X/Y plot)."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    label_w, label_h = 110, 18
    grid = Image.new("RGB", (label_w + len(col_labels) * (w + pad), label_h + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(col_labels):
        draw.text((label_w + c * (w + pad) + 2, 2), text, fill="black")
    for r, (row, text) in enumerate(zip(rows, row_labels)):
        y = label_h + r * (h + pad)
        draw.text((2, y + h // 2 - 6), text, fill="black")
        for c, image in enumerate(row):
            grid.paste(image, (label_w + c * (w + pad), y))
    return grid
