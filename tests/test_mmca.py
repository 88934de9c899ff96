"""Tests for MMCA: the per-pair cross-attention kernel against loop references, the n-gram CNN,
and the model's invariances (region order, padding, tiling, α = 0)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmr_jax.kernels import cross_attention as ca
from xmr_jax.kernels.common import l2norm, masked_mean
from xmr_jax.models import mmca

D, H, F, DC = 8, 2, 12, 6
R, L = 4, 5
RTOL, ATOL = 1e-5, 1e-5


def _unit_params(seed, d=D, h=H, f=F):
  rng = np.random.default_rng(seed)
  n = lambda shape, s=0.5: jnp.asarray(s * rng.normal(size=shape), jnp.float32)
  p = {f"w{c}": n((d, h, d // h)) for c in "qkv"}
  p.update({f"b{c}": n((h, d // h), 0.1) for c in "qkv"})
  p.update(wo=n((h, d // h, d)), bo=n((d,), 0.1), w1=n((d, f)), b1=n((f,), 0.1),
           w2=n((f, d)), b2=n((d,), 0.1), ln1_scale=1 + n((d,), 0.1), ln1_bias=n((d,), 0.1),
           ln2_scale=1 + n((d,), 0.1), ln2_bias=n((d,), 0.1))
  return p


def _cnn_params(seed, d=D, dc=DC, e=D):
  rng = np.random.default_rng(seed)
  n = lambda shape, s=0.5: jnp.asarray(s * rng.normal(size=shape), jnp.float32)
  p = {}
  for l in (1, 2, 3):
    p[f"conv{l}_w"] = n((l, d, dc))
    p[f"conv{l}_b"] = n((dc,), 0.1)
  p["fc_w"] = n((3 * dc, e))
  p["fc_b"] = n((e,), 0.1)
  return p


@pytest.fixture(scope="module")
def kernel_inputs():
  rng = np.random.default_rng(0)
  regions = jnp.asarray(rng.normal(size=(3, R, D)), jnp.float32)
  words = jnp.asarray(rng.normal(size=(4, L, D)), jnp.float32)
  # Image 2 has no real region at all (edge case of the softmax merge); caption 3 one word.
  region_mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
  word_mask = jnp.arange(L)[None] < jnp.array([5, 3, 2, 1])[:, None]
  return dict(unit=_unit_params(1), cnn=_cnn_params(2), regions=regions, words=words,
              region_mask=region_mask, word_mask=word_mask)


@jax.jit
def _one_pair(unit, cnn, r, rm, x, xm):
  """One pair, the plain way: the Transformer unit on [R_i ‖ X_c], then the two poolings."""
  y = jnp.concatenate([r, x], 0)
  m = jnp.concatenate([rm, xm], 0)
  q, k, v = ca.project_qkv(unit, y)
  att = ca.masked_attention(q, k, v, m)
  out = ca.unit_after_attention(unit, y, att, m)
  return att.reshape(R + L, D), masked_mean(out[:R], rm), ca.ngram_embedding(cnn, out[R:], xm)


def _pair_reference(unit, cnn, regions, region_mask, words, word_mask):
  """Per-pair loop over every image × caption."""
  n_i, n_c = regions.shape[0], words.shape[0]
  att = np.zeros((n_i, n_c, R + L, D))
  i1 = np.zeros((n_i, n_c, D))
  c1 = np.zeros((n_i, n_c, D))
  for i in range(n_i):
    for c in range(n_c):
      att[i, c], i1[i, c], c1[i, c] = _one_pair(unit, cnn, regions[i], region_mask[i],
                                                words[c], word_mask[c])
  return att, i1, c1


def test_concat_attention_equals_per_pair_loop(kernel_inputs):
  x = kernel_inputs

  @jax.jit
  def fused(unit, regions, region_mask, words, word_mask):
    r_qkv = ca.project_qkv(unit, regions)
    x_qkv = ca.project_qkv(unit, words)
    return ca.concat_attention_pairs(
        r_qkv, region_mask, ca.intra_block_stats(*r_qkv, region_mask),
        x_qkv, word_mask, ca.intra_block_stats(*x_qkv, word_mask))

  out_r, out_x = fused(x["unit"], x["regions"], x["region_mask"], x["words"], x["word_mask"])
  att, i1, c1 = _pair_reference(x["unit"], x["cnn"], x["regions"], x["region_mask"],
                                x["words"], x["word_mask"])
  got = np.concatenate([np.reshape(out_r, out_r.shape[:3] + (D,)),
                        np.reshape(out_x, out_x.shape[:3] + (D,))], 2)
  np.testing.assert_allclose(got, att, rtol=RTOL, atol=ATOL)
  gi1, gc1 = jax.jit(ca.cross_attention_pairs)(x["unit"], x["cnn"], x["regions"],
                                               x["region_mask"], x["words"], x["word_mask"])
  np.testing.assert_allclose(gi1, i1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gc1, c1, rtol=1e-4, atol=1e-4)
  # An image with no real region gives i1 = 0 but its words still attend among themselves.
  assert np.all(np.asarray(gi1)[2] == 0) and np.all(np.isfinite(np.asarray(gc1)))


def test_chunked_scores_and_gradients_match_naive(kernel_inputs):
  x = kernel_inputs
  args = (x["regions"], x["region_mask"], x["words"], x["word_mask"])

  def fused(unit, chunk):
    return ca.cross_attention_scores(unit, x["cnn"], *args, chunk=chunk)

  def naive(unit):
    # Materialise every pair's [R ‖ X] and run the plain Transformer unit on it.
    n_i, n_c = x["regions"].shape[0], x["words"].shape[0]
    y = jnp.concatenate([jnp.broadcast_to(x["regions"][:, None], (n_i, n_c, R, D)),
                         jnp.broadcast_to(x["words"][None], (n_i, n_c, L, D))], 2)
    m = jnp.concatenate([jnp.broadcast_to(x["region_mask"][:, None], (n_i, n_c, R)),
                         jnp.broadcast_to(x["word_mask"][None], (n_i, n_c, L))], 2)
    out = ca.transformer_unit(unit, y, m)
    i1 = masked_mean(out[:, :, :R], m[:, :, :R])
    c1 = ca.ngram_embedding(x["cnn"], out[:, :, R:], m[:, :, R:])
    return jnp.sum(l2norm(i1) * l2norm(c1), -1)

  w = jnp.asarray(np.random.default_rng(5).normal(size=(3, 4)), jnp.float32)

  @jax.jit
  def both(unit):
    # chunk=2 over 3 images: one chunk of 2 and a remainder of 1, each rematerialised.
    ref, g_ref = jax.value_and_grad(lambda u: jnp.sum(w * naive(u)))(unit)
    got, g_got = jax.value_and_grad(lambda u: jnp.sum(w * fused(u, 2)))(unit)
    return naive(unit), fused(unit, 2), g_ref, g_got

  ref, got, g_ref, g_got = both(x["unit"])
  np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
  for name in g_ref:
    np.testing.assert_allclose(g_got[name], g_ref[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_ngram_embedding_loop_reference_and_padding():
  cnn = _cnn_params(3)
  words = np.random.default_rng(4).normal(size=(2, L, D)).astype(np.float32)
  lengths = [5, 2]
  mask = np.arange(L)[None] < np.array(lengths)[:, None]
  ngram = jax.jit(ca.ngram_embedding)
  got = np.asarray(ngram(cnn, jnp.asarray(words), jnp.asarray(mask)))
  p = jax.tree.map(np.asarray, cnn)
  for b, n in enumerate(lengths):
    x = np.concatenate([words[b, :n], np.zeros((2, D))], 0)    # zero padding past the end
    pooled = []
    for l in (1, 2, 3):
      feats = [np.maximum(0, sum(x[t + j] @ p[f"conv{l}_w"][j] for j in range(l))
                          + p[f"conv{l}_b"]) for t in range(n)]
      pooled.append(np.max(feats, 0))
    want = np.concatenate(pooled) @ p["fc_w"] + p["fc_b"]
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
  # Garbage in padded positions and extra padding change nothing.
  noisy = np.where(mask[..., None], words, 7.0)
  padded = np.concatenate([noisy, np.full((2, 3, D), -3.0)], 1)
  pmask = np.concatenate([mask, np.zeros((2, 3), bool)], 1)
  np.testing.assert_allclose(ngram(cnn, jnp.asarray(padded), jnp.asarray(pmask)),
                             got, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- model tests

N_IMG, N_TXT, R_M, L_M, FEAT, VOCAB = 4, 5, 6, 7, 10, 40


def _model(alpha=0.5, **kw):
  return mmca.MMCA(vocab_size=VOCAB, embed_dim=8, word_dim=6, num_heads=2, ffn_dim=16,
                   conv_dim=5, max_len=16, alpha=alpha, **kw)


def _batch(seed, n_img=N_IMG, n_txt=N_TXT):
  rng = np.random.default_rng(seed)
  regions = rng.normal(size=(n_img, R_M, FEAT)).astype(np.float32)
  region_mask = np.ones((n_img, R_M), bool)
  region_mask[1, 4:] = False
  lengths = rng.integers(1, L_M + 1, size=n_txt)
  token_mask = np.arange(L_M)[None] < lengths[:, None]
  tokens = np.where(token_mask, rng.integers(1, VOCAB, size=(n_txt, L_M)), 0).astype(np.int32)
  return (dict(regions=regions, region_mask=region_mask),
          dict(tokens=tokens, token_mask=token_mask))


def _init(model, images, texts, seed=0):
  init = jax.jit(lambda k, i, t: model.init({"params": k}, i, t, train=False))
  return init(jax.random.PRNGKey(seed), images, texts)


@pytest.fixture(scope="module")
def model_setup():
  model = _model()
  images, texts = _batch(0)
  variables = _init(model, images, texts)

  @jax.jit
  def encode(variables, images, texts):
    return (model.apply(variables, images, train=False, method="encode_images"),
            model.apply(variables, texts, train=False, method="encode_texts"))

  score = jax.jit(lambda v, i, t: model.apply(v, i, t, method="score"))
  scores = lambda v, i, t: score(v, *encode(v, i, t))
  img, txt = encode(variables, images, texts)
  return dict(model=model, variables=variables, images=images, texts=texts, scores=scores,
              score=score, img=img, txt=txt, full=np.asarray(score(variables, img, txt)))


def test_region_permutation_invariance(model_setup):
  s = model_setup
  rng = np.random.default_rng(3)
  images = {k: v.copy() for k, v in s["images"].items()}
  for i in range(N_IMG):
    perm = rng.permutation(R_M)
    images["regions"][i] = images["regions"][i][perm]
    images["region_mask"][i] = images["region_mask"][i][perm]
  got = s["scores"](s["variables"], images, s["texts"])
  np.testing.assert_allclose(got, s["full"], rtol=1e-5, atol=1e-5)


def test_padding_invariance(model_setup):
  s = model_setup
  images, texts = s["images"], s["texts"]
  # Garbage in every padded slot, plus extra padded regions and tokens.
  regions = np.where(images["region_mask"][..., None], images["regions"], 9.0)
  regions = np.concatenate([regions, np.full((N_IMG, 3, FEAT), -5.0, np.float32)], 1)
  region_mask = np.concatenate([images["region_mask"], np.zeros((N_IMG, 3), bool)], 1)
  tokens = np.where(texts["token_mask"], texts["tokens"], 3)
  tokens = np.concatenate([tokens, np.full((N_TXT, 4), 5, np.int32)], 1)
  token_mask = np.concatenate([texts["token_mask"], np.zeros((N_TXT, 4), bool)], 1)
  got = s["scores"](s["variables"], dict(regions=regions, region_mask=region_mask),
                    dict(tokens=tokens, token_mask=token_mask))
  np.testing.assert_allclose(got, s["full"], rtol=1e-5, atol=1e-5)


def test_tiled_equals_untiled_and_chunking(model_setup):
  s = model_setup
  take = lambda tree, idx: jax.tree.map(lambda a: a[np.asarray(idx)], tree)
  rows, cols = [3, 1], [4, 0, 2]
  block = s["score"](s["variables"], take(s["img"], rows), take(s["txt"], cols))
  np.testing.assert_allclose(block, s["full"][np.ix_(rows, cols)], rtol=1e-5, atol=1e-5)
  chunked = jax.jit(lambda v, i, t: _model(score_chunk=3).apply(v, i, t, method="score"))(
      s["variables"], s["img"], s["txt"])                        # 4 images = 3 + 1
  np.testing.assert_allclose(chunked, s["full"], rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_self_attention_only(model_setup):
  s = model_setup
  model0 = _model(alpha=0.0)
  v0 = _init(model0, s["images"], s["texts"])
  full_params = s["variables"]["params"]
  assert set(v0["params"]) == set(full_params) - {"cross_unit", "cross_cnn"}
  # Same self-attention parameters -> S_0 = S_alpha - alpha * <i1, c1>.
  shared = {"params": {k: full_params[k] for k in v0["params"]}}
  img0, txt0, s0 = jax.jit(lambda v: model0.apply(v, s["images"], s["texts"], train=False))(
      shared)
  assert set(img0) == {"emb"} and set(txt0) == {"emb"}        # no fragments kept
  np.testing.assert_allclose(s0, img0["emb"] @ txt0["emb"].T, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(img0["emb"], s["img"]["emb"], rtol=1e-6, atol=1e-6)
  cross = jax.jit(ca.cross_attention_scores)(
      dict(full_params["cross_unit"]), dict(full_params["cross_cnn"]), s["img"]["frag"],
      s["img"]["mask"], s["txt"]["frag"], s["txt"]["mask"])
  np.testing.assert_allclose(s0, s["full"] - 0.5 * np.asarray(cross), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(cross)).max() > 1e-3    # the cross term really contributes


def test_variants_and_text_param_hook(model_setup):
  s = model_setup
  model = _model(share_weights=True, cross_input="self_attended")
  v = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(1)}, s["images"],
                                        s["texts"], train=False))
  assert set(v["params"]) == set(s["variables"]["params"]) - {"cross_unit", "cross_cnn"}
  assert "cross_unit" not in v["params"] and "cross_cnn" not in v["params"]
  new_pos = jnp.ones_like(s["variables"]["params"]["text_encoder"]["pos"])
  params = mmca.replace_text_params(s["variables"]["params"], {"pos": new_pos})
  assert np.all(params["text_encoder"]["pos"] == 1.0)
  with pytest.raises(ValueError):
    mmca.replace_text_params(s["variables"]["params"], {"pos": new_pos[:2]})
  with pytest.raises(KeyError):
    mmca.replace_text_params(s["variables"]["params"], {"bert": new_pos})


def test_captions_longer_than_max_len_fail_before_training():
  from configs import mmca as mmca_config
  from xmr_jax.common.errors import ConfigError
  from xmr_jax.types import DataInfo
  config = mmca_config.get_config("runlocal")          # max_len 64
  info = DataInfo(vocab_size=VOCAB, region_dim=FEAT, num_regions=R_M, max_text_len=80)
  with pytest.raises(ConfigError, match=r"padded to 80 tokens but config.model.max_len=64; "
                                        r"set --config.model.max_len=80"):
    mmca.build_method(config.model, info)
  ok = mmca.build_method(config.model, DataInfo(vocab_size=VOCAB, region_dim=FEAT,
                                                num_regions=R_M, max_text_len=64))
  assert ok.model.max_len == 64


def test_config_and_loss():
  from configs import mmca as mmca_config
  from xmr_jax.types import DataInfo
  for arg in ("runlocal", "data=f30k", "data=coco,alpha=0"):
    config = mmca_config.get_config(arg)
    method = mmca.build_method(config.model, DataInfo(vocab_size=VOCAB, region_dim=FEAT,
                                                num_regions=R_M))
    assert method.name == "mmca" and method.model.alpha == config.model.alpha
  assert mmca_config.get_config("data=coco,alpha=0").model.alpha == 0.0
  scores = jnp.array([[0.9, 0.5], [0.8, 0.1]])
  loss, _ = mmca.loss_fn(None, None, scores, {"margin": jnp.float32(0.2)}, None)
  # i2t: max(0, .2+.5-.9)=0, max(0, .2+.8-.1)=.9; t2i: max(0, .2+.8-.9)=.1, max(0,.2+.5-.1)=.6
  np.testing.assert_allclose(loss, 0.0 + 0.9 + 0.1 + 0.6, rtol=1e-6)
