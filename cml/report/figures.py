"""Labelled image grids and loss-curve plots."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_W = 160  # left column: row labels (prompt, seed)
HEADER_H = 24  # top row: column labels (weights)
MIN_CELL = 128


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def cell_scale(h: int) -> int:
    """Small images (demo scale: 64 px) are enlarged by a whole factor so labels and content stay readable."""
    return max(1, -(-MIN_CELL // h))


def grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str = "") -> Image.Image:
    """rows x cols images of one size, with labels: (LABEL_W + cols*w*k) x (HEADER_H + rows*h*k) pixels, k = cell_scale(h)."""
    w, h = cells[0][0].size
    k = cell_scale(h)
    w, h = w * k, h * k
    rows, cols = len(cells), len(cells[0])
    out = Image.new("RGB", (LABEL_W + cols * w, HEADER_H + rows * h), "white")
    d = ImageDraw.Draw(out)
    f = _font()
    if title:
        d.text((4, 4), title[:24], fill="black", font=f)
    for c, label in enumerate(col_labels):
        d.text((LABEL_W + c * w + 4, 6), label, fill="black", font=f)
    for r, row in enumerate(cells):
        d.multiline_text((4, HEADER_H + r * h + 4), _wrap(row_labels[r], 24), fill="black", font=f)
        for c, img in enumerate(row):
            out.paste(img.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (LABEL_W + c * w, HEADER_H + r * h))
    return out


def _wrap(text: str, n: int) -> str:
    lines = [line[i : i + n] for line in text.splitlines() for i in range(0, max(len(line), 1), n)]
    return "\n".join(lines) or "(empty)"


def loss_plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, losses in curves.items():
        if losses:
            ax.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per step)")
    ax.set_yscale("log")
    ax.set_title("training loss per stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
