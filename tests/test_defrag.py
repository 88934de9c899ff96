"""DeFrag: kernels against loop references, MIL constraint, masks, tiles, schedule."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xmr_jax.kernels import fragments as K
from xmr_jax.losses import defrag as defrag_losses
from xmr_jax.models import defrag
from xmr_jax.types import DataInfo

B, R, F, T, L = 4, 5, 6, 4, 7
VOCAB, WORDS, RELS = 20, 15, 3


# ----------------------------------------------------------------------------- references

def ref_similarity(dots, im, tm, n, normalization, accumulation, threshold):
  bi, ni, bt, ns = dots.shape
  out = np.zeros((bi, bt))
  for k, l in itertools.product(range(bi), range(bt)):
    ii = [i for i in range(ni) if im[k, i]]
    jj = [j for j in range(ns) if tm[l, j]]
    total = 0.0
    for j in jj:
      vals = [max(dots[k, i, l, j], 0.0) if threshold else dots[k, i, l, j] for i in ii]
      if accumulation == "sum":
        total += sum(vals)
      elif vals:
        total += max(vals)
    denom = len(jj) + n
    if normalization == "paper":
      denom *= max(len(ii), 1)
    out[k, l] = total / denom
  return out


def ref_fragment_loss(dots, im, tm, mil, margin=1.0):
  """DeFragCost.m's local cost, on the valid fragments only, with explicit loops."""
  bi, ni, bt, ns = dots.shape
  rows = [(k, i) for k in range(bi) for i in range(ni) if im[k, i]]
  cols = [(l, j) for l in range(bt) for j in range(ns) if tm[l, j]]
  loss, labels = 0.0, {}
  for (l, j) in cols:
    y = {}
    for (k, i) in rows:
      if k != l:
        y[k, i] = -1.0
      elif mil:
        y[k, i] = 1.0 if dots[k, i, l, j] > 0 else -1.0
      else:
        y[k, i] = 1.0
    bag = [(k, i) for (k, i) in rows if k == l]
    if mil and bag and not any(y[r] > 0 for r in bag):
      y[max(bag, key=lambda r: dots[r[0], r[1], l, j])] = 1.0
    n_pos = sum(v > 0 for v in y.values())
    n_neg = sum(v < 0 for v in y.values())
    for (k, i), v in y.items():
      w = 1.0 / n_pos if v > 0 else 1.0 / n_neg
      loss += w * max(0.0, margin - v * dots[k, i, l, j])
      labels[(k, i, l, j)] = v
  return loss, labels


def ref_global(s, margin):
  n = s.shape[0]
  total = 0.0
  for k in range(n):
    for l in range(n):
      if l != k:
        total += max(0.0, s[l, k] - s[k, k] + margin) + max(0.0, s[k, l] - s[k, k] + margin)
  return total


def random_case(seed, bi=3, ni=4, bt=3, ns=5, d=6):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(bi, ni, d)).astype(np.float32)
  s = rng.normal(size=(bt, ns, d)).astype(np.float32)
  im = rng.random((bi, ni)) < 0.8
  tm = rng.random((bt, ns)) < 0.7
  im[:, 0] = True
  tm[:, 0] = True
  return v, s, im, tm


# ----------------------------------------------------------------------------- kernels

def test_fragment_scores_one_gemm_matches_einsum():
  v, s, _, _ = random_case(0)
  dots = K.fragment_scores(jnp.asarray(v), jnp.asarray(s))
  np.testing.assert_allclose(dots, np.einsum("kid,ljd->kilj", v, s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalization,accumulation,threshold", [
    ("paper", "sum", True), ("matlab", "sum", True), ("matlab", "max", False),
    ("paper", "max", True)])
def test_fragment_similarity_matches_loops(normalization, accumulation, threshold):
  v, s, im, tm = random_case(1)
  dots = np.einsum("kid,ljd->kilj", v, s)
  got = K.fragment_similarity(jnp.asarray(dots), jnp.asarray(im), jnp.asarray(tm),
                              smoothing=10.0, normalization=normalization,
                              accumulation=accumulation, threshold=threshold)
  want = ref_similarity(dots, im, tm, 10.0, normalization, accumulation, threshold)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fragment_similarity_hand_value():
  # one image (2 fragments) x one sentence (1 fragment): scores 3 and -1 -> (3 + 0) / (2 (1 + 10))
  dots = jnp.asarray([3.0, -1.0]).reshape(1, 2, 1, 1)
  ones = jnp.ones((1, 2), bool)
  got = K.fragment_similarity(dots, ones, jnp.ones((1, 1), bool), smoothing=10.0)
  np.testing.assert_allclose(got, [[3.0 / 22.0]], rtol=1e-6)


@pytest.mark.parametrize("mil", [False, True])
def test_fragment_alignment_loss_matches_loops(mil):
  for seed in range(3):
    v, s, im, tm = random_case(10 + seed)
    dots = np.einsum("kid,ljd->kilj", v, s)
    loss, y = K.fragment_alignment_loss(jnp.asarray(dots), jnp.asarray(im), jnp.asarray(tm),
                                        mil=mil, margin=1.0)
    want, labels = ref_fragment_loss(dots, im, tm, mil)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    y = np.asarray(y).reshape(dots.shape)
    for key, val in labels.items():
      assert y[key] == val, key


def test_mil_sentence_fragment_without_positive_gets_its_best():
  # Image 0 has 3 fragments; sentence 0's fragment scores them -3, -0.5, -2 (no positive):
  # MIL must label exactly fragment 1 (the best) +1 and the others -1.
  dots = np.full((2, 3, 2, 1), 0.5, np.float32)
  dots[0, :, 0, 0] = [-3.0, -0.5, -2.0]
  dots[1, :, 1, 0] = [2.0, -1.0, 1.0]
  ones_i, ones_t = jnp.ones((2, 3), bool), jnp.ones((2, 1), bool)
  loss, y = K.fragment_alignment_loss(jnp.asarray(dots), ones_i, ones_t, mil=True)
  y = np.asarray(y).reshape(dots.shape)
  np.testing.assert_array_equal(y[0, :, 0, 0], [-1, 1, -1])
  np.testing.assert_array_equal(y[1, :, 1, 0], [1, -1, 1])          # sign where positives exist
  assert np.all(y[1, :, 0, 0] == -1) and np.all(y[0, :, 1, 0] == -1)
  want, _ = ref_fragment_loss(dots, np.ones((2, 3), bool), np.ones((2, 1), bool), True)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # By hand, sentence 0: the forced positive costs 1 + 0.5 = 1.5 (weight 1); its 5 negatives
  # (scores -3, -2, 0.5, 0.5, 0.5) cost (0 + 0 + 3 * 1.5) / 5 = 0.9. Sentence 1: positives
  # 2 and 1 cost 0 (weight 1/2 each); negatives -1, 0.5 x 3 cost (0 + 3 * 1.5) / 4 = 1.125.
  np.testing.assert_allclose(loss, 1.5 + 0.9 + 1.125, rtol=1e-6)


def test_mil_constraint_holds_after_label_assignment():
  rng = np.random.default_rng(3)
  dots = rng.normal(size=(5, 6, 5, 4)).astype(np.float32) - 1.5      # mostly negative
  im = rng.random((5, 6)) < 0.7
  tm = rng.random((5, 4)) < 0.8
  im[:, 0] = True
  y = np.asarray(K.alignment_labels(jnp.asarray(dots), jnp.asarray(im), jnp.asarray(tm),
                                    mil=True)).reshape(dots.shape)
  for l in range(5):
    for j in range(4):
      if tm[l, j]:
        assert np.sum((y[l, :, l, j] > 0) & im[l]) >= 1, (l, j)
        off = [k for k in range(5) if k != l]
        assert np.all(y[off][:, :, l, j] < 0)


def test_alignment_weights_balance_each_sentence_fragment():
  v, s, im, tm = random_case(5)
  dots = jnp.asarray(np.einsum("kid,ljd->kilj", v, s))
  y = K.alignment_labels(dots, jnp.asarray(im), jnp.asarray(tm), mil=True)
  valid = np.asarray(im).reshape(-1)[:, None] & np.asarray(tm).reshape(-1)[None, :]
  w = np.asarray(K.alignment_weights(y, jnp.asarray(valid)))
  y = np.asarray(y)
  cols = valid.any(0)
  np.testing.assert_allclose(np.sum(w * (y > 0), 0)[cols], 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.sum(w * (y < 0), 0)[cols], 1.0, rtol=1e-6)
  assert np.all(w[~valid] == 0)


def test_global_ranking_matches_loops():
  s = np.random.default_rng(6).normal(size=(5, 5)).astype(np.float32)
  np.testing.assert_allclose(defrag_losses.global_ranking_loss(jnp.asarray(s), 0.7), ref_global(s, 0.7),
                             rtol=1e-5)


def test_pair_alignments_matches_loops():
  v, s, im, tm = random_case(7, bi=3, bt=3)
  index, score = K.pair_alignments(jnp.asarray(v), jnp.asarray(im), jnp.asarray(s),
                                   jnp.asarray(tm))
  for b in range(3):
    for j in range(s.shape[1]):
      if not tm[b, j]:
        assert index[b, j] == -1
        continue
      vals = [(v[b, i] @ s[b, j], i) for i in range(v.shape[1]) if im[b, i]]
      best_val, best_i = max(vals)
      assert index[b, j] == best_i
      np.testing.assert_allclose(score[b, j], best_val, rtol=1e-5)


# ----------------------------------------------------------------------------- model

def make_config(**overrides):
  m = dict(word_dim=4, embed_dim=8, fragments="dependency", objective="full", use_mil=True,
           shared_relation_matrix=False, whole_image="mean", freeze_word_embeddings=False,
           max_regions=0, smoothing=10.0, normalization="paper", accumulation="sum",
           threshold=True, mil_start_epoch=2.0, global_start_epoch=1.0)
  m.update(overrides)
  return ml_collections.ConfigDict(dict(model=m))


INFO = DataInfo(vocab_size=VOCAB, region_dim=F, num_regions=R, word_vocab_size=WORDS,
                num_relations=RELS)
HP = {"margin": jnp.float32(0.1), "global_weight": jnp.float32(0.5),
      "fragment_margin": jnp.float32(1.0)}


def make_batch(seed, b=B, r=R, t=T, l=L):
  rng = np.random.default_rng(seed)
  region_mask = np.arange(r)[None] < rng.integers(2, r + 1, (b, 1))
  deps = np.stack([rng.integers(0, RELS, (b, t)), rng.integers(1, WORDS, (b, t)),
                   rng.integers(1, WORDS, (b, t))], -1).astype(np.int32)
  deps_mask = np.arange(t)[None] < rng.integers(1, t + 1, (b, 1))
  token_mask = np.arange(l)[None] < rng.integers(2, l + 1, (b, 1))
  tokens = np.where(token_mask, rng.integers(1, VOCAB, (b, l)), 0).astype(np.int32)
  images = {"regions": rng.normal(size=(b, r, F)).astype(np.float32), "region_mask": region_mask}
  texts = {"tokens": tokens, "token_mask": token_mask, "deps": deps, "deps_mask": deps_mask}
  return images, texts


def pad(images, texts, extra_r=3, extra_t=2, extra_l=3, seed=99):
  """Appends padded regions / triples / tokens holding garbage values."""
  rng = np.random.default_rng(seed)
  b = images["regions"].shape[0]
  im = {"regions": np.concatenate([images["regions"],
                                   rng.normal(size=(b, extra_r, F)).astype(np.float32)], 1),
        "region_mask": np.concatenate([images["region_mask"], np.zeros((b, extra_r), bool)], 1)}
  junk = rng.integers(0, RELS, (b, extra_t, 3)).astype(np.int32)
  tx = {"deps": np.concatenate([texts["deps"], junk], 1),
        "deps_mask": np.concatenate([texts["deps_mask"], np.zeros((b, extra_t), bool)], 1),
        "tokens": np.concatenate([texts["tokens"], rng.integers(1, VOCAB, (b, extra_l))
                                  .astype(np.int32)], 1),
        "token_mask": np.concatenate([texts["token_mask"], np.zeros((b, extra_l), bool)], 1)}
  return im, tx


@pytest.fixture(scope="module")
def dep_model():
  method = defrag.build_method(make_config().model, INFO)
  images, texts = make_batch(0)
  variables = method.model.init(jax.random.key(0), images, texts, train=False)
  apply = jax.jit(lambda v, im, tx: method.model.apply(v, im, tx, train=False))
  return method, variables, apply, (images, texts)


def test_relation_specific_fragment_by_hand(dep_model):
  method, variables, apply, (images, texts) = dep_model
  _, txt, _ = apply(variables, images, texts)
  p = variables["params"]
  emb = np.asarray(p["word_embed"]["embedding"])
  rel, w1, w2 = texts["deps"][1, 0]
  x = np.concatenate([emb[w1], emb[w2]])
  want = np.maximum(0, x @ np.asarray(p["rel_kernel"][rel]) + np.asarray(p["rel_bias"][rel]))
  np.testing.assert_allclose(txt["frags"][1, 0], want, rtol=1e-5, atol=1e-6)
  assert p["rel_kernel"].shape == (RELS, 8, 8)


def test_mask_invariance_of_scores_and_loss(dep_model):
  method, variables, apply, (images, texts) = dep_model
  img, txt, scores = apply(variables, images, texts)
  img_p, txt_p, scores_p = apply(variables, *pad(images, texts))
  np.testing.assert_allclose(scores_p, scores, rtol=1e-5, atol=1e-6)
  for epoch in (0.0, 5.0):
    hp = dict(HP, epoch=jnp.float32(epoch))
    loss, _ = method.loss_fn(img, txt, scores, hp, None)
    loss_p, _ = method.loss_fn(img_p, txt_p, scores_p, hp, None)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-5)


def test_tiled_scores_equal_full(dep_model):
  method, variables, _, (images, texts) = dep_model
  enc_i = lambda im: method.model.apply(variables, im, train=False,
                                        method=method.model.encode_images)
  enc_t = lambda tx: method.model.apply(variables, tx, train=False,
                                        method=method.model.encode_texts)
  score = lambda a, b: method.model.apply(variables, a, b, method=method.model.score)
  img, txt = enc_i(images), enc_t(texts)
  full = np.asarray(score(img, txt))
  rows, cols = slice(1, 3), slice(0, 3)
  tile = score(jax.tree.map(lambda x: x[rows], img), jax.tree.map(lambda x: x[cols], txt))
  np.testing.assert_allclose(tile, full[rows, cols], rtol=1e-6, atol=1e-7)
  # and S_kl from the kernels' loop reference on the encoded fragments
  dots = np.einsum("kid,ljd->kilj", img["frags"], txt["frags"])
  want = ref_similarity(dots, np.asarray(img["mask"]), np.asarray(txt["mask"]), 10.0,
                        "paper", "sum", True)
  np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-6)


def test_schedule_switches_mil_and_global(dep_model):
  method, variables, apply, (images, texts) = dep_model
  img, txt, scores = apply(variables, images, texts)
  loss_fn = jax.jit(method.loss_fn)
  dots = K.fragment_scores(img["frags"], txt["frags"])
  c0, _ = K.fragment_alignment_loss(dots, img["mask"], txt["mask"], mil=False)
  cf, _ = K.fragment_alignment_loss(dots, img["mask"], txt["mask"], mil=True)
  cg = defrag_losses.global_ranking_loss(scores, 0.1)
  for epoch, want in ((0.0, c0), (1.0, c0 + 0.5 * cg), (2.0, cf + 0.5 * cg)):
    loss, metrics = loss_fn(img, txt, scores, dict(HP, epoch=jnp.float32(epoch)), None)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(metrics["mil_on"]) == float(epoch >= 2.0)


def test_shared_relation_matrix_and_gradients():
  method = defrag.build_method(make_config(shared_relation_matrix=True).model, INFO)
  images, texts = make_batch(1)
  variables = method.model.init(jax.random.key(1), images, texts, train=False)
  assert variables["params"]["rel_kernel"].shape == (1, 8, 8)

  def loss(params):
    img, txt, s = method.model.apply({"params": params}, images, texts, train=True)
    return method.loss_fn(img, txt, s, HP, None)[0]

  grads = jax.grad(loss)(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("kind", ["bigram", "word"])
def test_bigram_and_word_fragments(kind):
  method = defrag.build_method(make_config(fragments=kind, whole_image="none").model, INFO)
  images, texts = make_batch(2)
  variables = method.model.init(jax.random.key(2), images, texts, train=False)
  txt = method.model.apply(variables, texts, train=False, method=method.model.encode_texts)
  p = variables["params"]
  emb, k, bias = (np.asarray(p["word_embed"]["embedding"]), np.asarray(p["rel_kernel"][0]),
                  np.asarray(p["rel_bias"][0]))
  tok, tm = texts["tokens"], texts["token_mask"]
  for b in range(B):
    n = int(tm[b].sum())
    count = n - 1 if kind == "bigram" else n
    assert int(np.sum(txt["mask"][b])) == count
    j = count - 1
    x = (np.concatenate([emb[tok[b, j]], emb[tok[b, j + 1]]]) if kind == "bigram"
         else emb[tok[b, j]])
    np.testing.assert_allclose(txt["frags"][b, j], np.maximum(0, x @ k + bias), rtol=1e-5,
                               atol=1e-6)
  img = method.model.apply(variables, images, train=False, method=method.model.encode_images)
  assert img["frags"].shape[1] == R          # whole_image='none': regions only
  im_p, tx_p = pad(images, texts)
  _, _, s = method.model.apply(variables, images, texts, train=False)
  _, _, s_p = method.model.apply(variables, im_p, tx_p, train=False)
  np.testing.assert_allclose(s_p, s, rtol=1e-5, atol=1e-6)


def test_training_writes_the_alignment_plot(tiny_data_dir, tmp_path):
  import os
  from conftest import train_tiny
  workdir = str(tmp_path / "defrag")
  res = train_tiny("defrag", tiny_data_dir, workdir, embed_dim=16, word_dim=8)
  assert 0 <= res["rsum"] <= 600
  assert os.path.getsize(os.path.join(workdir, "plots", "alignments.png")) > 1000
