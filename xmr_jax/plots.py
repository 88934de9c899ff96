"""Pictures of a run: training curves, retrieval examples, grouped bars.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so
no global state and no display needed). Every plotting function creates the
parent directory, writes the PNG atomically (temporary file in the same
directory, then ``os.replace``) and returns the output path. Figures are saved
without ``bbox_inches="tight"`` so the PNG is exactly ``figsize * dpi`` pixels.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GREEN = "#00c800"  # correct retrieval
RED = "#dc0000"    # wrong retrieval
_FRAME_WIDTH = 6.0


def _save(fig: Figure, out_png: str | os.PathLike, dpi: int) -> str:
  """Writes fig to out_png atomically and returns the path."""
  out = os.fspath(out_png)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=parent)
  try:
    with os.fdopen(fd, "wb") as f:
      FigureCanvasAgg(fig)
      fig.savefig(f, format="png", dpi=dpi)
    os.replace(tmp, out)  # readers never see a half-written PNG
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return out


# ---------------------------------------------------------------------------
# Training curves.


def read_metrics_jsonl(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the trainer's metrics.jsonl into step/value arrays.

  Lines with "loss" are training points, lines with "dev_rsum" evaluation
  points (a line may be both). A malformed final line is skipped, since the
  trainer may be writing it right now; a malformed earlier line raises.

  Returns:
    dict with "train_step", "loss", "eval_step", "dev_rsum" float arrays.
  """
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  cols: dict[str, list[float]] = {
      "train_step": [], "loss": [], "eval_step": [], "dev_rsum": []}
  for num, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      if num == len(lines):
        break
      raise ValueError(f"{path}:{num}: not valid JSON ({e}); each line of "
                       "metrics.jsonl must be one JSON object.") from e
    if not isinstance(rec, dict) or "step" not in rec:
      raise ValueError(f"{path}:{num}: expected a JSON object with 'step'.")
    for key, step_key in (("loss", "train_step"), ("dev_rsum", "eval_step")):
      if key in rec:
        cols[step_key].append(float(rec["step"]))
        cols[key].append(float(rec[key]))
  return {k: np.asarray(v, dtype=float) for k, v in cols.items()}


def _curve_panel(ax: Any, x: np.ndarray, y: np.ndarray, label: str,
                 best: str | None) -> None:
  ax.set_xlabel("step")
  ax.set_ylabel(label)
  ax.grid(alpha=0.3)
  if not len(x):
    ax.text(0.5, 0.5, f"no {label} yet", ha="center", va="center",
            transform=ax.transAxes)
    return
  ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3)
  if best == "max" and np.isfinite(y).any():
    i = int(np.nanargmax(y))
    ax.plot(x[i], y[i], "*", color=GREEN, ms=12)
    ax.annotate(f"best {y[i]:.1f} @ {int(x[i])}", (x[i], y[i]),
                textcoords="offset points", xytext=(-8, -14), ha="right",
                fontsize=8)


def plot_curves(metrics_jsonl_path: str | os.PathLike,
                out_png: str | os.PathLike, *,
                figsize: tuple[float, float] = (10.0, 4.0),
                dpi: int = 100) -> str:
  """Training loss and dev rsum over steps, side by side."""
  data = read_metrics_jsonl(metrics_jsonl_path)
  fig = Figure(figsize=figsize)
  ax_loss, ax_rsum = fig.subplots(1, 2)
  _curve_panel(ax_loss, data["train_step"], data["loss"], "loss", None)
  _curve_panel(ax_rsum, data["eval_step"], data["dev_rsum"], "dev rsum",
               "max")
  ax_loss.set_title("training loss")
  ax_rsum.set_title("dev rsum (R@1+5+10, both directions)")
  fig.tight_layout()
  return _save(fig, out_png, dpi)


# ---------------------------------------------------------------------------
# Retrieval examples.


def top_k_retrievals(scores: Any, k: int) -> np.ndarray:
  """Indices of the k best gallery columns per query row, best first.

  Ties go to the lower index (stable sort), as in evaluation/metrics.py.
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2:
    raise ValueError(f"scores must be 2-D; got shape {scores.shape}.")
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def select_examples(scores: Any, *, direction: str, num_queries: int,
                    k: int, captions_per_image: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Picks queries and their top-k answers from a (n_img, n_txt) matrix.

  Args:
    direction: "i2t" (image queries, caption answers) or "t2i".

  Returns:
    (queries (q,), retrieved (q, k), correct (q, k) bool); queries are drawn
    without replacement with ``np.random.default_rng(seed)`` and sorted.
  """
  scores = np.asarray(scores)
  if direction not in ("i2t", "t2i"):
    raise ValueError(f"direction must be 'i2t' or 't2i'; got {direction!r}.")
  n_queries = scores.shape[0] if direction == "i2t" else scores.shape[1]
  rng = np.random.default_rng(seed)
  queries = np.sort(rng.choice(n_queries, size=min(num_queries, n_queries),
                               replace=False))
  if direction == "i2t":
    retrieved = top_k_retrievals(scores[queries], k)
    correct = retrieved // captions_per_image == queries[:, None]
  else:
    retrieved = top_k_retrievals(scores[:, queries].T, k)
    correct = retrieved == queries[:, None] // captions_per_image
  return queries, retrieved, correct


def _check_example_inputs(scores: np.ndarray, captions: Any, pixels: Any,
                          captions_per_image: int) -> None:
  n_img = scores.shape[0] if scores.ndim == 2 else -1
  if scores.ndim != 2 or scores.shape[1] != captions_per_image * n_img:
    raise ValueError(f"scores shape {scores.shape} must be (n_img, "
                     f"{captions_per_image} * n_img).")
  if len(captions) != scores.shape[1]:
    raise ValueError(f"got {len(captions)} captions for {scores.shape[1]} "
                     "score columns.")
  if pixels is not None:
    pixels = np.asarray(pixels)
    if (pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3
        or pixels.shape[0] != scores.shape[0]):
      raise ValueError(f"pixels must be uint8 (n_img={scores.shape[0]}, H, W, "
                       f"3); got {pixels.dtype} {pixels.shape}.")


def _draw_t2i_row(fig: Figure, grid: Any, row: int, caption: str,
                  images: list[np.ndarray], ids: np.ndarray,
                  correct: np.ndarray) -> None:
  """One caption query: its text, then the retrieved images with frames."""
  ax = fig.add_subplot(grid[row, 0])
  ax.axis("off")
  ax.text(0.0, 0.5, textwrap.fill(caption, 30), va="center", fontsize=8)
  for j, (img, idx, ok) in enumerate(zip(images, ids, correct)):
    ax = fig.add_subplot(grid[row, j + 1])
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_color(GREEN if ok else RED)
      spine.set_linewidth(_FRAME_WIDTH)
    ax.set_title(f"#{j + 1}  image {idx}", fontsize=7)


def _draw_i2t_row(fig: Figure, grid: Any, row: int, image_id: int,
                  texts: list[str], correct: np.ndarray) -> None:
  """One image query: its top-k captions as coloured, marked text lines."""
  ax = fig.add_subplot(grid[row, 0])
  ax.axis("off")
  n = len(texts) + 1
  ax.text(0.0, 1.0 - 0.5 / n, f"image {image_id}", fontsize=9,
          weight="bold", va="center", transform=ax.transAxes)
  for j, (text, ok) in enumerate(zip(texts, correct)):
    mark = "\u2713" if ok else "\u2717"  # check mark / ballot x
    ax.text(0.02, 1.0 - (j + 1.5) / n,
            f"{j + 1}. {mark} {textwrap.shorten(text, 110)}",
            color=GREEN if ok else RED, fontsize=8, va="center",
            transform=ax.transAxes)


def plot_retrieval_examples(scores: Any, captions: Any,
                            out_png: str | os.PathLike, *,
                            pixels: Any = None, k: int = 5,
                            num_queries: int = 4,
                            captions_per_image: int = 5, seed: int = 0,
                            figsize: tuple[float, float] | None = None,
                            dpi: int = 100) -> str:
  """Qualitative retrieval results.

  With ``pixels`` (n_img, H, W, 3) uint8: a few captions, each followed by
  its top-k images, framed green if correct and red if not (t2i). Without:
  a few images, each with its top-k captions as text, correct ones green
  with a check mark (i2t).
  """
  scores = np.asarray(scores)
  _check_example_inputs(scores, captions, pixels, captions_per_image)
  direction = "i2t" if pixels is None else "t2i"
  queries, retrieved, correct = select_examples(
      scores, direction=direction, num_queries=num_queries, k=k,
      captions_per_image=captions_per_image, seed=seed)
  nq, kk = retrieved.shape
  if direction == "t2i":
    figsize = figsize or (1.5 * (kk + 2.5), 1.5 * nq)
    fig = Figure(figsize=figsize)
    grid = fig.add_gridspec(nq, kk + 1, width_ratios=[2.5] + [1] * kk,
                            left=0.02, right=0.98, bottom=0.02, top=0.94,
                            wspace=0.08, hspace=0.25)
    for r in range(nq):
      _draw_t2i_row(fig, grid, r, str(captions[queries[r]]),
                    [pixels[i] for i in retrieved[r]], retrieved[r],
                    correct[r])
  else:
    figsize = figsize or (10.0, 0.25 * (kk + 2) * nq)
    fig = Figure(figsize=figsize)
    grid = fig.add_gridspec(nq, 1, left=0.02, right=0.98, bottom=0.02,
                            top=0.98, hspace=0.1)
    for r in range(nq):
      _draw_i2t_row(fig, grid, r, int(queries[r]),
                    [str(captions[c]) for c in retrieved[r]], correct[r])
  return _save(fig, out_png, dpi)


# ---------------------------------------------------------------------------
# Grouped bars.


def plot_bars(table: dict[str, dict[str, float]], out_png: str | os.PathLike,
              title: str, *, ylabel: str = "",
              figsize: tuple[float, float] | None = None,
              dpi: int = 100) -> str:
  """Grouped bar chart: one group per outer key, one bar per inner key.

  E.g. ``{"margin=0.1": {"r1": 40.2, "rsum": 380.0}, "margin=0.2": {...}}``.
  Series are the union of inner keys in first-seen order; a missing value
  leaves a gap.
  """
  if not table:
    raise ValueError("plot_bars needs a non-empty table.")
  groups = list(table)
  series = list(dict.fromkeys(s for g in groups for s in table[g]))
  values = np.array([[table[g].get(s, np.nan) for s in series]
                     for g in groups], dtype=float)
  fig = Figure(figsize=figsize or (max(6.0, 1.2 * len(groups) + 2.0), 4.0))
  ax = fig.subplots()
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  for j, name in enumerate(series):
    bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, values[:, j],
                  width, label=name)
    ax.bar_label(bars, labels=[f"{v:.1f}" if np.isfinite(v) else ""
                               for v in values[:, j]], fontsize=7)
  ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0)
  ax.set_title(title)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  return _save(fig, out_png, dpi)


# ---------------------------------------------------------------------------
# Fragment alignments (DeFrag, paper fig. 4).


def plot_alignments(examples: list[dict[str, Any]], out_png: str | os.PathLike, *,
                    dpi: int = 100) -> str:
  """Each example: an image with, per sentence fragment, the box of its best-aligned region.

  ``examples``: dicts with ``caption`` (str), ``fragments`` (list of str labels),
  ``boxes`` (list of (x0, y0, x1, y1) in [0, 1], or None for the whole-image fragment),
  ``scores`` (list of floats) and ``pixels`` ((H, W, 3) uint8, optional: a blank canvas if
  absent). Fragment i and its box share a colour.
  """
  if not examples:
    raise ValueError("plot_alignments: no examples to draw")
  n = len(examples)
  fig = Figure(figsize=(6.5, 3.2 * n))
  palette = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown",
             "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
  for row, ex in enumerate(examples):
    ax_img = fig.add_subplot(n, 2, 2 * row + 1)
    ax_txt = fig.add_subplot(n, 2, 2 * row + 2)
    pixels = ex.get("pixels")
    h, w = (pixels.shape[:2] if pixels is not None else (64, 64))
    ax_img.imshow(pixels if pixels is not None else np.full((h, w, 3), 255, np.uint8))
    ax_img.set_xticks([]); ax_img.set_yticks([])
    ax_txt.axis("off")
    ax_txt.text(0, 1, textwrap.fill(ex["caption"], 40), va="top", fontsize=8, weight="bold")
    for i, (label, box, score) in enumerate(zip(ex["fragments"], ex["boxes"], ex["scores"])):
      colour = palette[i % len(palette)]
      where = "whole image" if box is None else "region"
      ax_txt.text(0, 0.8 - 0.09 * i, f"{label}  ->  {where} ({score:.2f})", va="top",
                  fontsize=7, color=colour)
      if box is not None:
        x0, y0, x1, y1 = box
        ax_img.add_patch(_rect((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, colour))
  fig.tight_layout()
  return _save(fig, out_png, dpi)


def _rect(xy, width, height, colour):
  from matplotlib.patches import Rectangle
  return Rectangle(xy, width, height, fill=False, edgecolor=colour, linewidth=1.5)


def plot_recall_by_bins(curves: dict[str, dict[str, list]], out_png: str | os.PathLike, *,
                        xlabel: str = "uncertainty bin (low -> high)", ylabel: str = "R@1",
                        title: str = "", dpi: int = 100) -> str:
  """One line per entry of ``curves`` ({name: recall_by_bins(...) output}) over bin index."""
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot(1, 1, 1)
  for name, c in curves.items():
    ax.plot(np.arange(1, len(c["recall"]) + 1), c["recall"], marker="o", label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return _save(fig, out_png, dpi)
