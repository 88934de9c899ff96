"""Tests for xmr_jax.evaluation.metrics: hand cases, loop references, errors."""

import numpy as np
import pytest

from xmr_jax.evaluation import metrics as M

approx = pytest.approx

# --- 2 images x 10 captions (k=5) ------------------------------------------
# Row 0 order: c1 .9, c5 .8, c6 .7, c7 .6, c8 .5, c9 .4, c2 .3, c3 .2, c0, c4.
#   Own captions 0..4; best own is c1 at position 1 -> rank 1.
# Row 1 order: c0 .9, c1 .8, c2 .7, c3 .6, c8 .5, ... Own captions 5..9; the
#   best own is c8 at position 5 -> rank 5.
S2 = np.array([
    [0.1, 0.9, 0.3, 0.2, 0.0, 0.8, 0.7, 0.6, 0.5, 0.4],
    [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.0, 0.5, 0.4],
])
# t2i, column (img0, img1) and true image c // 5:
# c0 (.1,.9) t0 -> 2; c1 (.9,.8) t0 -> 1; c2 (.3,.7) -> 2; c3 (.2,.6) -> 2;
# c4 (0,.1) -> 2; c5 (.8,.2) t1 -> 2; c6 (.7,.3) -> 2; c7 (.6,0) -> 2;
# c8 (.5,.5) t1: tie, image 0 has the lower index so it comes first -> 2
# (SCAN's argsort[::-1] would say 1); c9 (.4,.4) t1: tie -> 2.
S2_T2I = [2, 1, 2, 2, 2, 2, 2, 2, 2, 2]


def test_two_by_ten_hand_case():
  np.testing.assert_array_equal(M.i2t_ranks(S2, 5), [1, 5])
  res = M.i2t(S2, 5)
  # ranks [1, 5]: median 3; SCAN: rank0 [0, 4], floor(2) + 1 = 3.
  assert res == approx(dict(r1=50.0, r5=100.0, r10=100.0, medr=3.0,
                            meanr=3.0))
  np.testing.assert_array_equal(M.t2i_ranks(S2, 5), S2_T2I)
  res = M.t2i(S2, 5)
  assert res == approx(dict(r1=10.0, r5=100.0, r10=100.0, medr=2.0,
                            meanr=1.9))


# --- 3 images x 15 captions (k=5) ------------------------------------------
S3 = np.zeros((3, 15))
S3[0, 3] = 1.0  # image 0: own caption c3 strictly first -> rank 1
# image 1: c0..c3 (.9 .. .6) beat its best own c5 (.5) -> rank 5
S3[1, :10] = [0.9, 0.8, 0.7, 0.6, 0.0, 0.5, 0.4, 0.3, 0.2, 0.1]
# image 2: all own captions at -1, the 10 others above -> rank 11
S3[2, :10] = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.15]
S3[2, 10:] = -1.0
# t2i columns (img0, img1, img2):
# c0 (0,.9,.01) t0 -> 3; c1, c2 likewise -> 3; c3 (1,.6,.04) -> 1;
# c4 (0,0,.05) t0: img2 ahead, img1 tied but later -> 2;
# c5..c8 t1: img1 highest -> 1; c9 (0,.1,.15) t1: img2 ahead -> 2;
# c10..c14 (0,0,-1) t2: both others ahead -> 3.
S3_T2I = [3, 3, 3, 1, 2, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3]


def test_three_by_fifteen_hand_case():
  np.testing.assert_array_equal(M.i2t_ranks(S3, 5), [1, 5, 11])
  np.testing.assert_array_equal(M.t2i_ranks(S3, 5), S3_T2I)
  res = M.evaluate(S3, 5)
  # i2t ranks [1, 5, 11]: R@1 1/3, R@5 2/3, R@10 2/3, median 5, mean 17/3.
  assert res["i2t"] == approx(dict(r1=100 / 3, r5=200 / 3, r10=200 / 3,
                                   medr=5.0, meanr=17 / 3))
  # t2i: five 1s, two 2s, eight 3s: median (8th of 15) = 3, mean 33/15.
  assert res["t2i"] == approx(dict(r1=100 / 3, r5=100.0, r10=100.0,
                                   medr=3.0, meanr=2.2))
  assert res["rsum"] == approx(100 / 3 + 400 / 3 + 100 / 3 + 200.0)


def test_all_ties_follow_stable_rule():
  # Every score equal: an item is preceded by every lower-indexed item.
  s = np.zeros((3, 15))
  np.testing.assert_array_equal(M.i2t_ranks(s, 5), [1, 6, 11])
  np.testing.assert_array_equal(M.t2i_ranks(s, 5), np.arange(15) // 5 + 1)


@pytest.mark.parametrize("ranks,medr", [
    ([1, 2, 7], 2.0),        # odd count: middle element
    ([1, 2, 3, 8], 2.0),     # even: median 2.5 -> 2 (rank0 1.5 -> 1 + 1)
    ([1, 4], 2.0),           # even: 2.5 -> 2 (rank0 [0, 3]: 1.5 -> 2)
    ([2, 3], 2.0),           # even: 2.5 -> 2 (rank0 [1, 2]: 1.5 -> 2)
    ([3, 3, 5, 5], 4.0),     # even with integer median
])
def test_medr_matches_scan_formula(ranks, medr):
  ranks = np.array(ranks)
  out = M._summarize(ranks, return_ranks=False)
  assert out["medr"] == medr
  assert out["medr"] == np.floor(np.median(ranks - 1)) + 1
  assert out["meanr"] == approx(np.mean(ranks - 1) + 1)


def _scan_reference(sims, k):
  """Loop transcription of SCAN's i2t / t2i (0-based ranks, argsort[::-1])."""
  n_img = sims.shape[0]
  r_i2t = np.zeros(n_img)
  for i in range(n_img):
    inds = np.argsort(sims[i])[::-1]
    r_i2t[i] = min(np.where(inds == c)[0][0] for c in range(k * i, k * i + k))
  r_t2i = np.zeros(k * n_img)
  for c in range(k * n_img):
    inds = np.argsort(sims[:, c])[::-1]
    r_t2i[c] = np.where(inds == c // k)[0][0]

  def summary(r):
    return dict(r1=100.0 * np.mean(r < 1), r5=100.0 * np.mean(r < 5),
                r10=100.0 * np.mean(r < 10), medr=np.floor(np.median(r)) + 1,
                meanr=r.mean() + 1)
  return summary(r_i2t), summary(r_t2i), r_i2t, r_t2i


@pytest.mark.parametrize("n_img,k,chunk", [(24, 5, 1 << 22), (17, 3, 40)])
def test_matches_scan_loop_reference(monkeypatch, n_img, k, chunk):
  # Continuous scores (no ties) with structure so ranks spread over 1..n.
  monkeypatch.setattr(M, "_CHUNK_ELEMENTS", chunk)  # exercise chunking
  rng = np.random.default_rng(n_img)
  sims = rng.normal(size=(n_img, k * n_img))
  sims[np.arange(k * n_img) // k, np.arange(k * n_img)] += 1.5
  ref_i2t, ref_t2i, r0_i2t, r0_t2i = _scan_reference(sims, k)
  res = M.evaluate(sims, k, return_ranks=True)
  np.testing.assert_array_equal(res["i2t"].pop("ranks"), r0_i2t + 1)
  np.testing.assert_array_equal(res["t2i"].pop("ranks"), r0_t2i + 1)
  assert res["i2t"] == approx(ref_i2t)
  assert res["t2i"] == approx(ref_t2i)
  assert 0 < res["i2t"]["r1"] < 100  # the case is not degenerate


def _fold_case(fold_size=2, num_folds=5):
  """k=1; folds 0-3 identity blocks, fold 4 anti-identity; 5 off-block."""
  n = fold_size * num_folds
  s = np.full((n, n), 5.0)
  for f in range(num_folds):
    block = np.eye(fold_size) if f < num_folds - 1 else 1 - np.eye(fold_size)
    s[f * fold_size:(f + 1) * fold_size, f * fold_size:(f + 1) * fold_size] = (
        block)
  return s


def test_coco1k_averages_folds():
  res = M.evaluate(_fold_case(), k=1, protocol="coco1k", fold_size=2)
  # Folds 0-3: every rank 1. Fold 4: every rank 2 (the other item is ahead).
  # Means: R@1 (4 * 100 + 0) / 5 = 80, medr and meanr (4 * 1 + 2) / 5 = 1.2.
  expected = dict(r1=80.0, r5=100.0, r10=100.0, medr=1.2, meanr=1.2)
  assert res["i2t"] == approx(expected)
  assert res["t2i"] == approx(expected)
  # rsum from averaged recalls == mean of fold rsums (4 * 600 + 400) / 5.
  assert res["rsum"] == approx(560.0)


def test_coco5k_uses_whole_matrix():
  res = M.evaluate(_fold_case(), k=1, protocol="coco5k", fold_size=2)
  # All 8 off-block 5.0 scores are ahead of any in-block item: ranks 9 for
  # folds 0-3 (8 rows), 10 for fold 4 (2 rows); median 9, mean 9.2.
  expected = dict(r1=0.0, r5=0.0, r10=100.0, medr=9.0, meanr=9.2)
  assert res["i2t"] == approx(expected)
  assert res["t2i"] == approx(expected)
  default = M.evaluate(_fold_case(), k=1)
  for key in ("i2t", "t2i"):
    assert res[key] == approx(default[key])


def test_coco1k_ranks_are_fold_local():
  res = M.evaluate(_fold_case(), k=1, protocol="coco1k", fold_size=2,
                   return_ranks=True)
  np.testing.assert_array_equal(res["i2t"]["ranks"], [1] * 8 + [2] * 2)


@pytest.mark.parametrize("scores,kwargs,match", [
    (np.zeros(10), {}, "2-D"),
    (np.zeros((2, 9)), {}, "n_txt == k \\* n_img"),
    (np.zeros((2, 10)), {"k": 0}, "positive int"),
    (np.zeros((2, 10)), {"protocol": "coco2k"}, "unknown protocol"),
    (np.zeros((4, 20)), {"protocol": "coco1k"}, "5 x 1000 = 5000 images"),
    (np.zeros((4, 20)), {"protocol": "coco5k", "fold_size": 2},
     "5 x 2 = 10 images"),
    (np.full((2, 10), np.nan), {}, "NaN"),
])
def test_bad_inputs_raise(scores, kwargs, match):
  with pytest.raises(ValueError, match=match):
    M.evaluate(scores, **kwargs)


# --- R-Precision ------------------------------------------------------------


def test_r_precision_hand_case():
  scores = np.array([[0.5, 0.5, 0.5, 0.1],
                     [0.3, 0.9, 0.3, 0.3],
                     [0.2, 0.4, 0.6, 0.8],
                     [0.1, 0.2, 0.3, 0.4]])
  mask = np.array([[0, 1, 1, 0],   # R=2; 3-way tie, top-2 = idx 0, 1 -> 1/2
                   [0, 0, 0, 1],   # R=1; top-1 = idx 1 -> 0
                   [1, 1, 1, 0],   # R=3; top-3 = idx 3, 2, 1 -> 2/3
                   [0, 0, 0, 0]],  # R=0: left out of the mean
                  dtype=bool)
  assert M.r_precision(scores, mask) == approx(100 * (0.5 + 0 + 2 / 3) / 3)
  assert np.isnan(M.r_precision(scores, np.zeros_like(mask)))
  with pytest.raises(ValueError, match="positive_mask shape"):
    M.r_precision(scores, mask[:2])


def _r_precision_loop(scores, mask):
  vals = []
  for s, m in zip(scores, mask):
    r = m.sum()
    if r:
      vals.append(m[np.argsort(-s, kind="stable")[:r]].sum() / r)
  return 100 * np.mean(vals)


def test_r_precision_matches_loop_with_many_ties(monkeypatch):
  monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 64)
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 3, size=(30, 20)).astype(np.float32)  # many ties
  mask = rng.random((30, 20)) < 0.3
  assert M.r_precision(scores, mask) == approx(_r_precision_loop(scores, mask))


# --- PMRP -------------------------------------------------------------------
# k=1, 3 images; captions carry their image's labels unless told otherwise.
# Hamming distances: d(0,1)=1, d(0,2)=2, d(1,2)=3.
LABELS = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
SP = np.array([[0.2, 0.9, 0.5],    # image 0 ranks c1, c2, c0
               [0.8, 0.1, 0.3],    # image 1 ranks c0, c2, c1
               [0.7, 0.6, 0.4]])   # image 2 ranks c0, c1, c2
# i2t, plausible sets and hits:
#  z=0: {0},{1},{2}, all missed at top-1 -> 0
#  z=1: {0,1} top2 {1,2} 1/2; {0,1} top2 {0,2} 1/2; {2} top1 {0} 0 -> 1/3
#  z=2: {0,1,2} 1; {0,1} 1/2; {0,2} top2 {0,1} 1/2 -> 2/3
# t2i, columns: c0 ranks i1,i2,i0; c1 ranks i0,i2,i1; c2 ranks i0,i2,i1.
#  z=0: all missed -> 0
#  z=1: c0 {0,1} top2 {1,2} 1/2; c1 {0,1} top2 {0,2} 1/2; c2 {2} 0 -> 1/3
#  z=2: c0 {0,1,2} 1; c1 {0,1} 1/2; c2 {0,2} top2 {0,2} 1 -> 5/6
PER_ZETA = {"i2t": {0: 0.0, 1: 100 / 3, 2: 200 / 3},
            "t2i": {0: 0.0, 1: 100 / 3, 2: 500 / 6}}


def test_pmrp_hand_case():
  per = M.pmrp_per_zeta(SP, LABELS, k=1)
  assert per["i2t"] == approx(PER_ZETA["i2t"])
  assert per["t2i"] == approx(PER_ZETA["t2i"])
  res = M.pmrp(SP, LABELS, LABELS, k=1)
  assert res == approx({"i2t": 100 / 3, "t2i": (100 / 3 + 500 / 6) / 3})
  assert M.pmrp(SP, LABELS, k=1, zetas=(1,)) == approx(
      {"i2t": 100 / 3, "t2i": 100 / 3})


def test_pmrp_true_match_and_empty_queries():
  # Caption 2 now carries image 1's labels [1,0,0,0]. i2t with z=0:
  #  i0: {c0}, top1 c1 -> 0;  i1: {c1, c2}, top2 {c0, c2} -> 1/2;
  #  i2 ([0,1,1,0]): no caption has its labels -> R=0, dropped ...
  caps = LABELS[[0, 1, 1]]
  res = M.pmrp_per_zeta(SP, LABELS, caps, zetas=(0,), k=1,
                        true_match_plausible=False)
  assert res["i2t"][0] == approx(100 * 0.5 / 2)
  # ... unless the true pair always counts: i2 {c2}, top1 c0 -> 0.
  res = M.pmrp_per_zeta(SP, LABELS, caps, zetas=(0,), k=1)
  assert res["i2t"][0] == approx(100 * 0.5 / 3)


def test_pmrp_drops_unlabeled_items():
  # A 4th image/caption with no labels and the highest scores everywhere
  # must not change anything when dropped.
  s = np.full((4, 4), 2.0)
  s[:3, :3] = SP
  labels = np.vstack([LABELS, np.zeros((1, 4), int)])
  per = M.pmrp_per_zeta(s, labels, k=1)
  for key in ("i2t", "t2i"):
    assert per[key] == approx(PER_ZETA[key])
  # Kept, item 3 (distance 2, 1, 2 to images 0, 1, 2) joins at z=2, i2t:
  #  i0 {0,1,2,3} R=4 -> 1; i1 {0,1,3} top3 {c3,c0,c2} 2/3;
  #  i2 {0,2,3} top3 {c3,c0,c1} 2/3; i3 (all within 2) -> 1.  Mean 5/6.
  kept = M.pmrp_per_zeta(s, labels, k=1, drop_unlabeled=False)
  assert kept["i2t"][2] == approx(500 / 6)


def _pmrp_loop(scores, img_lab, cap_lab, k, zeta):
  out = {}
  for name, s, q_lab, g_lab, q_own, g_own in [
      ("i2t", scores, img_lab, cap_lab, np.arange(len(img_lab)),
       np.arange(len(cap_lab)) // k),
      ("t2i", scores.T, cap_lab, img_lab, np.arange(len(cap_lab)) // k,
       np.arange(len(img_lab)))]:
    vals = []
    for q in range(len(s)):
      dist = np.abs(g_lab - q_lab[q]).sum(1)
      plaus = (dist <= zeta) | (g_own == q_own[q])
      r = plaus.sum()
      vals.append(plaus[np.argsort(-s[q], kind="stable")[:r]].sum() / r)
    out[name] = 100 * np.mean(vals)
  return out


def test_pmrp_matches_loop_reference(monkeypatch):
  monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 50)
  rng = np.random.default_rng(2)
  n_img, k = 8, 2
  scores = rng.integers(0, 4, size=(n_img, k * n_img)).astype(float)  # ties
  img_lab = (rng.random((n_img, 5)) < 0.5).astype(int)
  img_lab[:, 0] = 1  # every item labelled, so nothing is dropped
  cap_lab = (rng.random((k * n_img, 5)) < 0.5).astype(int)
  cap_lab[:, 0] = 1
  per = M.pmrp_per_zeta(scores, img_lab, cap_lab, k=k)
  for zeta in (0, 1, 2):
    ref = _pmrp_loop(scores, img_lab, cap_lab, k, zeta)
    assert per["i2t"][zeta] == approx(ref["i2t"])
    assert per["t2i"][zeta] == approx(ref["t2i"])
  # cap_labels=None repeats image labels, as an explicit repeat would.
  assert M.pmrp(scores, img_lab, k=k) == approx(
      M.pmrp(scores, img_lab, np.repeat(img_lab, k, 0), k=k))


def test_evaluate_with_labels_and_pmrp_errors():
  res = M.evaluate(SP, k=1, img_labels=LABELS)
  assert res["pmrp"] == approx(M.pmrp(SP, LABELS, k=1))
  with pytest.raises(ValueError, match="img_labels must be multi-hot"):
    M.pmrp(SP, LABELS[:2], k=1)
  with pytest.raises(ValueError, match="only 0/1"):
    M.pmrp(SP, LABELS * 2, k=1)
  with pytest.raises(ValueError, match="classes"):
    M.pmrp(SP, LABELS, LABELS[:, :3], k=1)
  with pytest.raises(ValueError, match="zetas"):
    M.pmrp(SP, LABELS, k=1, zetas=(-1,))


def test_recall_by_bins_hand_case():
  # values sorted: idx 3 (0.1), 0 (0.2), 2 (0.5), 1 (0.9), 4 (1.0) -> bins [3, 0, 2] and [1, 4]
  values = [0.2, 0.9, 0.5, 0.1, 1.0]
  ranks = [1, 3, 1, 2, 1]
  out = M.recall_by_bins(values, ranks, num_bins=2)
  assert out["count"] == [3, 2]
  np.testing.assert_allclose(out["recall"], [100 * 2 / 3, 50.0])
  np.testing.assert_allclose(out["mean_value"], [(0.1 + 0.2 + 0.5) / 3, 0.95])
  with pytest.raises(ValueError, match="equal-length"):
    M.recall_by_bins([1.0, 2.0], [1])
