"""Tests for xmr_jax.plots: PNG output, atomic writes, selection logic."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from xmr_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _open_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  return Image.open(path).convert("RGB")


def _count_color(img, hex_color):
  rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
  return int(np.all(np.asarray(img) == rgb, axis=-1).sum())


def _only_png_left(directory, name):
  # Atomic write: no temporary file is left beside the result.
  assert sorted(os.listdir(directory)) == [name]


def _write_jsonl(path, truncated_tail=True):
  lines = [json.dumps({"step": s, "loss": 2.0 / s, "lr": 0.1})
           for s in (1, 2, 3, 4)]
  lines.insert(2, json.dumps({"step": 2, "dev_rsum": 120.5}))
  lines.append(json.dumps({"step": 4, "dev_rsum": 150.0, "loss": 0.4}))
  if truncated_tail:
    lines.append('{"step": 5, "lo')  # the trainer is mid-write
  path.write_text("\n".join(lines) + "\n")


def test_read_metrics_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_jsonl(path)
  data = plots.read_metrics_jsonl(path)
  np.testing.assert_allclose(data["train_step"], [1, 2, 3, 4, 4])
  np.testing.assert_allclose(data["loss"], [2.0, 1.0, 2 / 3, 0.5, 0.4])
  np.testing.assert_allclose(data["eval_step"], [2, 4])
  np.testing.assert_allclose(data["dev_rsum"], [120.5, 150.0])


def test_read_metrics_jsonl_bad_middle_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 2, "loss": 1}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:2"):
    plots.read_metrics_jsonl(path)


def test_plot_curves_writes_png(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_jsonl(path)
  out_dir = tmp_path / "plots" / "nested"
  out = plots.plot_curves(path, out_dir / "curves.png", figsize=(8, 3),
                          dpi=50)
  assert out == str(out_dir / "curves.png")
  assert _open_png(out).size == (400, 150)
  _only_png_left(out_dir, "curves.png")
  # Overwriting an existing file also works (os.replace).
  plots.plot_curves(path, out, figsize=(6, 3), dpi=50)
  assert _open_png(out).size == (300, 150)


def test_plot_curves_without_eval_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1.0}\n')
  out = plots.plot_curves(path, tmp_path / "c.png")
  assert _open_png(out).size == (1000, 400)  # default figsize x dpi


def test_top_k_retrievals_hand_case():
  scores = np.array([[0.1, 0.5, 0.5, 0.9],   # 0.9 first, tie 1 before 2
                     [3.0, 2.0, 1.0, 0.0]])
  np.testing.assert_array_equal(plots.top_k_retrievals(scores, 3),
                                [[3, 1, 2], [0, 1, 2]])
  np.testing.assert_array_equal(plots.top_k_retrievals(scores, 9).shape,
                                (2, 4))  # k larger than the gallery


# 2 images x 4 captions, 2 captions per image (caption c -> image c // 2).
SCORES = np.array([[0.9, 0.1, 0.8, 0.3],    # image 0 ranks c0, c2, c3, c1
                   [0.2, 0.7, 0.6, 0.5]])   # image 1 ranks c1, c2, c3, c0


def test_select_examples_i2t_hand_case():
  q, ret, ok = plots.select_examples(SCORES, direction="i2t", num_queries=5,
                                     k=2, captions_per_image=2, seed=0)
  np.testing.assert_array_equal(q, [0, 1])  # all images, sorted
  np.testing.assert_array_equal(ret, [[0, 2], [1, 2]])
  # image 0 owns c0, c1; image 1 owns c2, c3.
  np.testing.assert_array_equal(ok, [[True, False], [False, True]])


def test_select_examples_t2i_hand_case():
  q, ret, ok = plots.select_examples(SCORES, direction="t2i", num_queries=4,
                                     k=1, captions_per_image=2, seed=3)
  np.testing.assert_array_equal(q, [0, 1, 2, 3])
  # Columns: c0 (.9,.2) -> i0; c1 (.1,.7) -> i1; c2 (.8,.6) -> i0;
  # c3 (.3,.5) -> i1. True images: 0, 0, 1, 1.
  np.testing.assert_array_equal(ret, [[0], [1], [0], [1]])
  np.testing.assert_array_equal(ok, [[True], [False], [False], [True]])


def test_select_examples_is_seeded_subset():
  scores = np.random.default_rng(0).normal(size=(10, 20))
  a = plots.select_examples(scores, direction="t2i", num_queries=3, k=2,
                            captions_per_image=2, seed=7)
  b = plots.select_examples(scores, direction="t2i", num_queries=3, k=2,
                            captions_per_image=2, seed=7)
  assert len(set(a[0])) == 3 and list(a[0]) == sorted(a[0])
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_retrieval_examples_with_pixels_draws_frames(tmp_path):
  pixels = np.full((2, 8, 8, 3), 128, np.uint8)  # gray, no frame colours
  out = plots.plot_retrieval_examples(
      SCORES, ["a cat", "a dog", "a car", "a bus"], tmp_path / "ex.png",
      pixels=pixels, k=2, num_queries=4, captions_per_image=2,
      figsize=(6, 6), dpi=40)
  img = _open_png(out)
  assert img.size == (240, 240)
  # Each caption's top-2 holds one right and one wrong image.
  assert _count_color(img, plots.GREEN) > 20
  assert _count_color(img, plots.RED) > 20


def test_retrieval_examples_text_mode(tmp_path):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. a missing glyph for the marks
    out = plots.plot_retrieval_examples(
        SCORES, ["a cat", "a dog", "a car", "a bus"], tmp_path / "t.png",
        k=2, num_queries=2, captions_per_image=2)
  img = _open_png(out)
  assert img.size == (1000, 200)  # (10, 0.25 * (k + 2) * 2) inches x 100
  # Anti-aliased text: count strongly green and strongly red pixels.
  px = np.asarray(img).astype(int)
  greenish = (px[..., 1] > 150) & (px[..., 0] < 100) & (px[..., 2] < 100)
  reddish = (px[..., 0] > 150) & (px[..., 1] < 100) & (px[..., 2] < 100)
  assert greenish.sum() > 10 and reddish.sum() > 10


def test_retrieval_examples_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="pixels must be uint8"):
    plots.plot_retrieval_examples(SCORES, list("abcd"), tmp_path / "x.png",
                                  pixels=np.zeros((2, 4, 4, 3)),
                                  captions_per_image=2)
  with pytest.raises(ValueError, match="3 captions for 4"):
    plots.plot_retrieval_examples(SCORES, list("abc"), tmp_path / "x.png",
                                  captions_per_image=2)
  assert not os.path.exists(tmp_path / "x.png")


def test_plot_bars(tmp_path):
  table = {"margin=0.1": {"r1": 40.0, "rsum": 380.0},
           "margin=0.2": {"r1": 42.5},  # missing rsum leaves a gap
           "margin=0.3": {"rsum": 390.0, "r5": 70.0}}
  out = plots.plot_bars(table, tmp_path / "b" / "bars.png", "margins",
                        figsize=(5, 4), dpi=30)
  assert _open_png(out).size == (150, 120)
  _only_png_left(tmp_path / "b", "bars.png")
  with pytest.raises(ValueError, match="non-empty"):
    plots.plot_bars({}, tmp_path / "e.png", "empty")


def test_plot_alignments_draws_each_example(tmp_path):
  from PIL import Image
  ex = {"caption": "a red dog left of a car", "fragments": ["amod(dog, red)", "det(car, a)"],
        "boxes": [(0.1, 0.1, 0.5, 0.5), None], "scores": [1.5, 0.2],
        "pixels": np.zeros((64, 64, 3), np.uint8)}
  out = plots.plot_alignments([ex, dict(ex, pixels=None)], tmp_path / "al.png", dpi=50)
  with Image.open(out) as im:
    assert im.size == (int(6.5 * 50), int(3.2 * 2 * 50))
    rgb = np.asarray(im.convert("RGB")).astype(int)
  # tab:red (214, 39, 40) frames the first fragment's box
  assert np.any((abs(rgb[..., 0] - 214) < 30) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80))
  with pytest.raises(ValueError, match="no examples"):
    plots.plot_alignments([], tmp_path / "none.png")
  assert not (tmp_path / "none.png").exists()
