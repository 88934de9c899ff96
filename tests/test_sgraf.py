"""SGRAF: official-parity fixtures, kernels vs loop references, masks, tiles, loss, converter."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmr_jax.convert import sgraf_params_from_state_dict
from xmr_jax.kernels import sgraf as K
from xmr_jax.models import sgraf as M

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _fixture(variant):
  d = np.load(os.path.join(FIXTURES, f"sgraf_{variant}_head.npz"), allow_pickle=False)
  return {k: d[k] for k in d.files}


def _state_dict(d):
  return {str(k): d[str(k)] for k in d["param_names"]}


# ----------------------------------------------------------------- numpy loop references
def _l2(x, axis=-1):
  return x / (np.sqrt((x * x).sum(axis, keepdims=True)) + 1e-8)


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _lin(sd, name, x):
  return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _bn(sd, name, x, train, axes):
  """torch BatchNorm1d, channel axis = the axis not in ``axes``; returns (y, mean, unbiased var)."""
  if train:
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
  else:
    shape = [1] * x.ndim
    shape[[a for a in range(x.ndim) if a not in axes][0]] = -1
    mean = sd[name + ".running_mean"].reshape(shape)
    var = sd[name + ".running_var"].reshape(shape)
  y = (x - mean) / np.sqrt(var + 1e-5)
  shape = mean.shape
  n = x.size / mean.size
  return (y * sd[name + ".weight"].reshape(shape) + sd[name + ".bias"].reshape(shape),
          mean.ravel(), var.ravel() * n / (n - 1))


def ref_head(sd, img, cap, lens, variant, train=False):
  """The official EncoderSimilarity.forward, caption by caption (dropout off).

  Returns (sims, SAF running stats after the per-caption updates, or None)."""
  p = "v_global_w.embedding_"
  l_emb, _, _ = _bn(sd, p + "local.1", _lin(sd, p + "local.0", img), train, (0, 2))
  g_emb, _, _ = _bn(sd, p + "global.1", _lin(sd, p + "global.0", img.mean(1)), train, (0,))
  w = _softmax(_lin(sd, p + "common.0", np.tanh(l_emb) * np.tanh(g_emb)[:, None])[..., 0])
  img_glo = _l2((w[..., None] * img).sum(1))
  run_m, run_v = sd.get("SAF_module.bn.running_mean"), sd.get("SAF_module.bn.running_var")
  cols = []
  for i, n in enumerate(lens):
    c = cap[i, :n]
    p = "t_global_w.embedding_"
    le = np.tanh(_lin(sd, p + "local.0", c))
    ge = np.tanh(_lin(sd, p + "global.0", c.mean(0)))
    cap_glo = _l2((_softmax(_lin(sd, p + "common.0", le * ge)[..., 0])[:, None] * c).sum(0))
    attn = np.einsum("ird,ld->irl", img, c)
    attn = _l2(np.where(attn > 0, attn, 0.1 * attn), axis=2)
    ctx = _l2(np.einsum("irl,ird->ild", _softmax(9.0 * attn, axis=1), img))
    loc = _l2(_lin(sd, "sim_tranloc_w", (ctx - c[None]) ** 2))
    glo = _l2(_lin(sd, "sim_tranglo_w", (img_glo - cap_glo) ** 2))
    s = np.concatenate([glo[:, None], loc], 1)
    if variant == "sgr":
      for k in range(len([n for n in sd if n.endswith("graph_query_w.weight")])):
        q = _lin(sd, f"SGR_module.{k}.graph_query_w", s)
        kk = _lin(sd, f"SGR_module.{k}.graph_key_w", s)
        e = _softmax(np.einsum("bjs,bks->bjk", q, kk))
        s = np.maximum(_lin(sd, f"SGR_module.{k}.sim_graph_w", e @ s), 0)
      vec = s[:, 0]
    else:
      g = _lin(sd, "SAF_module.attn_sim_w", s)[..., 0][:, None]      # (n_img, 1, N)
      g, m, v = _bn(sd, "SAF_module.bn", g, train, (0, 2))
      if train:
        run_m, run_v = 0.9 * run_m + 0.1 * m, 0.9 * run_v + 0.1 * v
      a = 1 / (1 + np.exp(-g[:, 0]))
      a = a / (np.abs(a).sum(-1, keepdims=True) + 1e-8)
      vec = _l2(np.einsum("bn,bns->bs", a, s))
    cols.append(1 / (1 + np.exp(-_lin(sd, "sim_eval_w", vec)[:, 0])))
  return np.stack(cols, 1), (run_m, run_v)


# ------------------------------------------------------------------------ fixtures
def _mask(lens, length):
  return np.arange(length)[None] < np.asarray(lens)[:, None]


@pytest.fixture(scope="module", params=["sgr", "saf"])
def official(request):
  v = request.param
  d = _fixture(v)
  sd = _state_dict(d)
  # caption_chunk=2: the 6 (8) captions run as 3 (4) blocks under lax.map.
  head = M.SGRAFHead(256, 64, 16, v, sa_dropout=0.0, caption_chunk=2)
  variables = sgraf_params_from_state_dict(sd, v)
  apply = jax.jit(lambda var, *a, train=False: head.apply(var, *a, train=train,
                                                           mutable=["batch_stats"] if train else False),
                  static_argnames="train")
  return dict(v=v, d=d, sd=sd, head=head, variables=variables, apply=apply)


def test_official_parity(official):
  d = official["d"]
  img_mask = np.ones(d["img_emb"].shape[:2], bool)
  out = official["apply"](official["variables"], d["img_emb"], img_mask, d["cap_emb"],
                          _mask(d["cap_lens"], d["cap_emb"].shape[1]))
  np.testing.assert_allclose(np.asarray(out), d["sims"], atol=1e-5, rtol=0)
  ref, _ = ref_head(official["sd"], d["img_emb"].astype(np.float64), d["cap_emb"].astype(np.float64),
                    d["cap_lens"], official["v"])
  np.testing.assert_allclose(ref, d["sims"], atol=1e-5, rtol=0)   # the reference itself is right


def test_train_mode_matches_official_loop(official):
  """Train-mode BatchNorms (VisualSA over region slots, SAF per caption) vs the caption loop."""
  d = official["d"]
  img_mask = np.ones(d["img_emb"].shape[:2], bool)
  out, upd = official["apply"](official["variables"], d["img_emb"], img_mask, d["cap_emb"],
                               _mask(d["cap_lens"], d["cap_emb"].shape[1]), train=True)
  ref, (run_m, run_v) = ref_head(official["sd"], d["img_emb"].astype(np.float64),
                                 d["cap_emb"].astype(np.float64), d["cap_lens"], official["v"],
                                 train=True)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
  if official["v"] == "saf":
    bn = upd["batch_stats"]["SAF_module"]["bn"]
    np.testing.assert_allclose(np.asarray(bn["mean"]), run_m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn["var"]), run_v, rtol=1e-4, atol=1e-6)


def test_head_mask_and_item_independence(official):
  """Extra padding words, padded dummy captions and reordering items leave every score as is."""
  d = official["d"]
  img, cap, lens = d["img_emb"], d["cap_emb"], d["cap_lens"]
  img_mask = np.ones(img.shape[:2], bool)
  ip, tp = np.array([2, 0, 3, 1]), np.array([4, 1, 5, 0, 2, 3])
  cap_pad = np.concatenate([cap[tp], np.zeros((6, 5, 256), np.float32)], 1)
  cap_pad = np.concatenate([np.zeros((2, 23, 256), np.float32), cap_pad], 0)
  got = official["apply"](official["variables"], img[ip], img_mask, cap_pad,
                          _mask([3, 5] + list(lens[tp]), 23))
  np.testing.assert_allclose(np.asarray(got)[:, 2:], d["sims"][ip][:, tp], atol=1e-5, rtol=0)


# -------------------------------------------------------------------------- kernels
@pytest.fixture(scope="module")
def small():
  rng = np.random.default_rng(0)
  n_i, r, n_t, l, d, s = 3, 5, 4, 6, 8, 7
  regions = _l2(rng.normal(size=(n_i, r, d))).astype(np.float32)
  words = _l2(rng.normal(size=(n_t, l, d))).astype(np.float32)
  region_mask = np.ones((n_i, r), bool)
  region_mask[1, 3:] = False
  lens = np.array([6, 2, 4, 1])
  words = words * _mask(lens, l)[..., None]
  w = lambda *shape: rng.normal(size=shape).astype(np.float32) * 0.5
  return dict(regions=regions, region_mask=region_mask, words=words, lens=lens,
              word_mask=_mask(lens, l), w=w, s=s, d=d)


def test_t2v_attention_vs_loop(small):
  x = small
  got = np.asarray(jax.jit(K.t2v_attention)(x["regions"], x["region_mask"], x["words"],
                                            x["word_mask"]))
  for i in range(3):
    v = x["regions"][i, x["region_mask"][i]]
    for t in range(4):
      c = x["words"][t, :x["lens"][t]]
      a = v @ c.T
      a = _l2(np.where(a > 0, a, 0.1 * a), axis=1)               # over words
      ctx = _l2(_softmax(9.0 * a, axis=0).T @ v)                 # softmax over real regions
      np.testing.assert_allclose(got[i, t, :x["lens"][t]], ctx, atol=2e-6)


def test_similarity_vectors_vs_loop(small):
  x, w = small, small["w"]
  kern, bias = w(x["d"], x["s"]), w(x["s"])
  ctx = w(3, 4, 6, x["d"])
  loc = np.asarray(K.local_similarity(ctx, x["words"], kern, bias))
  gi, gt = _l2(w(3, x["d"])), _l2(w(4, x["d"]))
  glo = np.asarray(K.global_similarity(gi, gt, kern, bias))
  for i in range(3):
    for t in range(4):
      np.testing.assert_allclose(glo[i, t], _l2((gi[i] - gt[t]) ** 2 @ kern + bias), atol=2e-6)
      for l in range(6):
        np.testing.assert_allclose(loc[i, t, l], _l2((ctx[i, t, l] - x["words"][t, l]) ** 2 @ kern
                                                     + bias), atol=2e-6)


def test_attention_pool_vs_loop(small):
  x, w = small, small["w"]
  le, ge, ck, cb = w(4, 6, x["d"]), w(4, x["d"]), w(x["d"], 1), w(1)
  got = np.asarray(K.attention_pool(x["words"], x["word_mask"], le, ge, ck, cb))
  for t in range(4):
    n = x["lens"][t]
    a = _softmax((le[t, :n] * ge[t]) @ ck[:, 0] + cb[0])
    np.testing.assert_allclose(got[t], _l2(a @ x["words"][t, :n]), atol=2e-6)


def _steps(w, s, n):
  return [dict(query_kernel=w(s, s), query_bias=w(s), key_kernel=w(s, s), key_bias=w(s),
               graph_kernel=w(s, s), graph_bias=w(s)) for _ in range(n)]


def test_graph_reasoning_and_filtration_vs_loop(small):
  x, w, s = small, small["w"], small["s"]
  nodes = w(3, 4, 7, s)
  node_mask = np.concatenate([np.ones((4, 1), bool), x["word_mask"]], 1)[None]
  steps = _steps(w, s, 3)
  gates = w(3, 4, 7)
  out = {f: np.asarray(K.graph_reasoning(nodes, node_mask, steps, fold=f)) for f in (True, False)}
  saf = np.asarray(K.attention_filtration(nodes, node_mask, gates))
  np.testing.assert_allclose(out[True], out[False], atol=1e-5)
  for i in range(3):
    for t in range(4):
      h = nodes[i, t, :x["lens"][t] + 1]
      for p in steps:
        e = _softmax((h @ p["query_kernel"] + p["query_bias"])
                     @ (h @ p["key_kernel"] + p["key_bias"]).T)
        h = np.maximum(e @ h @ p["graph_kernel"] + p["graph_bias"], 0)
      np.testing.assert_allclose(out[False][i, t], h[0], rtol=1e-5, atol=1e-5)
      a = 1 / (1 + np.exp(-gates[i, t, :x["lens"][t] + 1]))
      ref = _l2((a / a.sum()) @ nodes[i, t, :x["lens"][t] + 1])
      np.testing.assert_allclose(saf[i, t], ref, atol=2e-6)


def test_t2v_attention_ignores_masked_regions(small):
  x = small
  extra = np.concatenate([x["regions"], np.ones((3, 2, x["d"]), np.float32)], 1)
  extra_mask = np.concatenate([x["region_mask"], np.zeros((3, 2), bool)], 1)
  a = K.t2v_attention(x["regions"], x["region_mask"], x["words"], x["word_mask"])
  b = K.t2v_attention(extra, extra_mask, x["words"], x["word_mask"])
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# -------------------------------------------------------------- model, loss, converter
def _torch_gru_ref(x, lens, w_ih, w_hh, b_ih, b_hh, reverse):
  """torch nn.GRU equations on packed sequences (one direction)."""
  hdim = w_hh.shape[1]
  out = np.zeros(x.shape[:2] + (hdim,))
  sig = lambda z: 1 / (1 + np.exp(-z))
  for b, n in enumerate(lens):
    h = np.zeros(hdim)
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
      gi, gh = w_ih @ x[b, t] + b_ih, w_hh @ h + b_hh
      r, z = sig(gi[:hdim] + gh[:hdim]), sig(gi[hdim:2 * hdim] + gh[hdim:2 * hdim])
      nn_ = np.tanh(gi[2 * hdim:] + r * gh[2 * hdim:])
      h = (1 - z) * nn_ + z * h
      out[b, t] = h
  return out


@pytest.fixture(scope="module")
def model_setup():
  """A tiny full SGRAF model with official-named random weights loaded by the converter."""
  rng = np.random.default_rng(1)
  vocab, wd, d, f, r, s = 11, 5, 8, 6, 4, 6
  w = lambda *shape: (rng.normal(size=shape) * 0.4).astype(np.float32)
  sd = {"img_enc.fc.weight": w(d, f), "img_enc.fc.bias": w(d), "txt_enc.embed.weight": w(vocab, wd)}
  for sfx in ("_l0", "_l0_reverse"):
    sd.update({f"txt_enc.cap_rnn.weight_ih{sfx}": w(3 * d, wd),
               f"txt_enc.cap_rnn.weight_hh{sfx}": w(3 * d, d),
               f"txt_enc.cap_rnn.bias_ih{sfx}": w(3 * d), f"txt_enc.cap_rnn.bias_hh{sfx}": w(3 * d)})
  model = M.SGRAF(vocab_size=vocab, region_dim=f, word_dim=wd, embed_dim=d, sim_dim=s,
                  num_regions=r, variant="sgr", word_dropout=0.0, sa_dropout=0.0)
  images = dict(regions=w(5, r, f), region_mask=np.ones((5, r), bool))
  lens = np.array([3, 5, 1, 4, 2])
  tokens = (rng.integers(1, vocab, size=(5, 6)) * _mask(lens, 6)).astype(np.int32)
  texts = dict(tokens=tokens, token_mask=_mask(lens, 6))
  init = jax.jit(lambda k: model.init({"params": k}, images, texts, train=False))(
      jax.random.PRNGKey(0))
  # Official names for every head leaf (inverse of the converter's naming), random values.
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}
  for col in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(init[col]["sim_enc"])[0]:
      keys = [re.sub(r"_(\d+)$", r".\1", k.key) for k in path]
      name = "sim_enc." + ".".join(keys[:-1] + [leaf_names[keys[-1]]])
      value = w(*leaf.shape[::-1]) if leaf.ndim == 2 else w(*leaf.shape)
      sd[name] = np.abs(value) + 0.5 if keys[-1] == "var" else value
  variables = sgraf_params_from_state_dict(sd, "sgr")
  return dict(model=model, sd=sd, variables=variables, images=images, texts=texts, lens=lens,
              init=init)


def test_full_model_converter_and_encoders(model_setup):
  x = model_setup
  assert jax.tree.structure(x["variables"]) == jax.tree.structure(x["init"])
  assert jax.tree.map(np.shape, x["variables"]) == jax.tree.map(np.shape, x["init"])
  sd = {k: v.astype(np.float64) for k, v in x["sd"].items()}
  words = sd["txt_enc.embed.weight"][x["texts"]["tokens"]]
  args = [sd[f"txt_enc.cap_rnn.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
  args_r = [sd[f"txt_enc.cap_rnn.{n}_l0_reverse"] for n in ("weight_ih", "weight_hh", "bias_ih",
                                                            "bias_hh")]
  cap = _l2((_torch_gru_ref(words, x["lens"], *args, False)
             + _torch_gru_ref(words, x["lens"], *args_r, True)) / 2)
  img = _l2(x["images"]["regions"] @ sd["img_enc.fc.weight"].T + sd["img_enc.fc.bias"])
  head_sd = {k[len("sim_enc."):]: v for k, v in sd.items() if k.startswith("sim_enc.")}
  ref, _ = ref_head(head_sd, img, cap, x["lens"], "sgr")
  _, _, scores = jax.jit(lambda v: x["model"].apply(v, x["images"], x["texts"], train=False))(
      x["variables"])
  np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-5)


def test_score_tiles_equal_full_matrix(model_setup):
  """Scoring a tile of the reprs gives the matching block of the full matrix (eval mode)."""
  x = model_setup
  model, v = x["model"], x["variables"]
  img, txt = jax.jit(lambda: (
      model.apply(v, x["images"], train=False, method=M.SGRAF.encode_images),
      model.apply(v, x["texts"], train=False, method=M.SGRAF.encode_texts)))()
  score = jax.jit(lambda i, t: model.apply(v, i, t, method=M.SGRAF.score))
  full = np.asarray(score(img, txt))
  tile = lambda tree, sl: jax.tree.map(lambda a: a[sl], tree)
  block = np.asarray(score(tile(img, slice(1, 4)), tile(txt, slice(2, 5))))
  np.testing.assert_allclose(block, full[1:4, 2:5], atol=1e-6, rtol=0)


def test_train_step_loss_and_state(model_setup):
  x = model_setup
  model, variables = x["model"], x["variables"]

  def loss(params):
    (_, _, scores), upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x["images"], x["texts"], train=True,
                                      rngs={"dropout": jax.random.PRNGKey(1)},
                                      mutable=["batch_stats"])
    value, _ = M.sgraf_loss(None, None, scores, {"margin": jnp.float32(0.2)}, None)
    return value, (scores, upd)

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, (scores, upd)), grads = step(variables["params"])
  s = np.asarray(scores, np.float64)
  diag = np.diag(s)
  off = ~np.eye(5, dtype=bool)
  hard_c = np.where(off, np.maximum(0.2 + s - diag[:, None], 0), 0).max(1).sum()
  hard_i = np.where(off, np.maximum(0.2 + s - diag[None, :], 0), 0).max(0).sum()
  np.testing.assert_allclose(float(value), hard_c + hard_i, rtol=1e-5)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # Warm-up epochs sum over every negative instead of taking the hardest.
  warm_hp = {"margin": jnp.float32(0.2), "epoch": jnp.float32(0),
             "hardneg_warmup_epochs": jnp.float32(1)}
  summed = np.where(off, np.maximum(0.2 + s - diag[:, None], 0)
                    + np.maximum(0.2 + s - diag[None, :], 0), 0).sum()
  np.testing.assert_allclose(float(M.sgraf_loss(None, None, scores, warm_hp, None)[0]), summed,
                             rtol=1e-5)
  after_hp = dict(warm_hp, epoch=jnp.float32(1))
  np.testing.assert_allclose(float(M.sgraf_loss(None, None, scores, after_hp, None)[0]),
                             hard_c + hard_i, rtol=1e-5)
  assert float(sum(np.abs(g).sum() for g in jax.tree.leaves(grads))) > 0
  # The VisualSA BatchNorm running stats moved (train mode), the SGR head has no other BN.
  old = variables["batch_stats"]["sim_enc"]["v_global_w"]["embedding_local_1"]["mean"]
  new = upd["batch_stats"]["sim_enc"]["v_global_w"]["embedding_local_1"]["mean"]
  assert not np.allclose(np.asarray(old), np.asarray(new))


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_sparse_backward_equals_dense(model_setup, warmup):
  """SGR's sparse backward (only the pairs with a gradient) gives the dense gradients: with the
  hardest-negative loss (<= 3B scores carry a gradient: sparse branch) and with the sum over
  negatives (more: the dense fallback)."""
  x = model_setup
  hp = {"margin": jnp.float32(0.2), "epoch": jnp.float32(0),
        "hardneg_warmup_epochs": jnp.float32(warmup)}

  def grads(model):
    def loss(params):
      (_, _, scores), _ = model.apply(
          {"params": params, "batch_stats": x["variables"]["batch_stats"]}, x["images"],
          x["texts"], train=True, rngs={"dropout": jax.random.PRNGKey(1)},
          mutable=["batch_stats"])
      return M.sgraf_loss(None, None, scores, hp, None)[0], scores
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(x["variables"]["params"])

  (v_s, scores), g_s = grads(x["model"])                      # sparse_backward=True (default)
  (v_d, _), g_d = grads(x["model"].clone(sparse_backward=False))
  np.testing.assert_allclose(float(v_s), float(v_d), rtol=1e-6)
  d_scores = jax.grad(lambda s: M.sgraf_loss(None, None, s, hp, None)[0])(scores)
  nnz = int(np.sum(np.asarray(d_scores) != 0))
  assert (nnz <= 15) if warmup == 0.0 else (nnz > 15), nnz      # which branch ran
  flat_s, flat_d = jax.tree.leaves(g_s), jax.tree.leaves(g_d)
  assert len(flat_s) == len(flat_d) and sum(np.abs(g).sum() for g in flat_d) > 0
  for a, b in zip(flat_s, flat_d):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_converter_rejects_mismatch():
  sd = _state_dict(_fixture("sgr"))
  with pytest.raises(ValueError, match="variant"):
    sgraf_params_from_state_dict(sd, "saf")
  with pytest.raises(NotImplementedError, match="unidirectional"):
    sgraf_params_from_state_dict({**sd, "txt_enc.embed.weight": np.zeros((3, 2)),
                                  "txt_enc.cap_rnn.weight_ih_l0": np.zeros((6, 2)),
                                  "img_enc.fc.weight": np.zeros((2, 2)),
                                  "img_enc.fc.bias": np.zeros(2)}, "sgr")
