"""PCME kernels against the official criterion's outputs, loop references, and model invariances."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.pcme import get_config
from xmr_jax.kernels import pcme as K
from xmr_jax.losses import pcme as pcme_losses
from xmr_jax.kernels.common import l2norm
from xmr_jax.models import pcme as M
from xmr_jax.types import DataInfo

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pcme_criterion.npz")
OFFICIAL = dict(official_sigmoid=True, official_kl=True)
LOSS_KEYS = ("loss", "i2t_loss", "t2i_loss", "i2t_pos_loss", "i2t_neg_loss", "t2i_pos_loss",
             "t2i_neg_loss")


@pytest.fixture(scope="module")
def fx():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _criterion(fx, si, sc, li, lc, a, b):
  return pcme_losses.pcme_criterion(si, sc, li, lc, a, b, vib_beta=float(fx["vib_beta"]), **OFFICIAL)


# ------------------------------------------------------------------ official parity

def test_fixture_settings(fx):
  meta = json.loads(str(fx["meta_json"]))
  assert meta["criterion_cfg"]["num_samples"] == fx["samples_img"].shape[1] == 7
  np.testing.assert_allclose(fx["samples_img"], fx["mu_img"][:, None]
                             + fx["eps_img"] * np.exp(fx["logsigma_img"])[:, None], atol=1e-6)


def test_match_probability_matches_official(fx):
  p = K.match_probability(fx["samples_img"], fx["samples_cap"], fx["a"], fx["b"],
                          official_sigmoid=True)
  np.testing.assert_allclose(p, fx["match_prob"], atol=2e-6)
  # The paper's sigmoid(s) differs from the official sigmoid(2s): the flag matters.
  p_paper = K.match_probability(fx["samples_img"], fx["samples_cap"], fx["a"], fx["b"])
  assert np.abs(np.asarray(p_paper) - fx["match_prob"]).max() > 1e-3


def test_loss_terms_match_official_float32(fx):
  _, m = _criterion(fx, fx["samples_img"], fx["samples_cap"], fx["logsigma_img"],
                    fx["logsigma_cap"], fx["a"], fx["b"])
  for k in LOSS_KEYS:
    np.testing.assert_allclose(m[k], fx[k + "_f64"], rtol=1e-4, atol=2e-5, err_msg=k)
  np.testing.assert_allclose(m["vib_loss"], fx["vib_loss"], rtol=1e-5)


def test_loss_terms_match_official_float64(fx):
  with jax.enable_x64(True):
    f64 = lambda k: jnp.asarray(fx[k], jnp.float64)
    _, m = _criterion(fx, f64("samples_img"), f64("samples_cap"), f64("logsigma_img"),
                      f64("logsigma_cap"), 15.0, 15.0)
    for k in LOSS_KEYS:
      assert m[k].dtype == jnp.float64
      np.testing.assert_allclose(float(m[k]), fx[k + "_f64"], rtol=1e-10, err_msg=k)


def test_gradients_match_official(fx):
  def loss_from_raw(mu_i, mu_c, ls_i, ls_c, a, b):
    zi = l2norm(mu_i)[:, None] + fx["eps_img"] * jnp.exp(ls_i)[:, None]
    zc = l2norm(mu_c)[:, None] + fx["eps_cap"] * jnp.exp(ls_c)[:, None]
    return _criterion(fx, zi, zc, ls_i, ls_c, a, b)[0]

  grads = jax.jit(jax.grad(loss_from_raw, argnums=range(6)))(
      fx["mu_img_raw"], fx["mu_cap_raw"], fx["logsigma_img"], fx["logsigma_cap"],
      jnp.float32(fx["a"]), jnp.float32(fx["b"]))
  names = ("grad_mu_img_raw", "grad_mu_cap_raw", "grad_logsigma_img", "grad_logsigma_cap",
           "grad_a", "grad_b")
  for name, g in zip(names, grads):
    ref = fx[name]
    np.testing.assert_allclose(g, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4,
                               err_msg=name)
  g_si, g_sc = jax.jit(jax.grad(
      lambda si, sc: _criterion(fx, si, sc, fx["logsigma_img"], fx["logsigma_cap"], 15., 15.)[0],
      argnums=(0, 1)))(fx["samples_img"], fx["samples_cap"])
  np.testing.assert_allclose(g_si, fx["grad_samples_img"], atol=1e-6)
  np.testing.assert_allclose(g_sc, fx["grad_samples_cap"], atol=1e-6)


# ------------------------------------------------------------------ loop references

def _loop_match_prob(z1, z2, a, b, k):
  out = np.zeros((len(z1), len(z2)))
  for n in range(len(z1)):
    for m in range(len(z2)):
      acc = 0.0
      for j in range(z1.shape[1]):
        for l in range(z2.shape[1]):
          s = -a * np.sqrt(np.sum((z1[n, j] - z2[m, l]) ** 2) + 1e-6) + b
          acc += 1.0 / (1.0 + np.exp(-k * s))
      out[n, m] = acc / (z1.shape[1] * z2.shape[1])
  return out


@pytest.mark.parametrize("official_sigmoid", [False, True])
def test_vectorised_match_probability_equals_loop(official_sigmoid):
  rng = np.random.default_rng(1)
  z1 = rng.normal(size=(3, 4, 5)).astype(np.float32) * 0.3
  z2 = rng.normal(size=(4, 3, 5)).astype(np.float32) * 0.3
  ref = _loop_match_prob(z1, z2, 2.0, 1.5, 2.0 if official_sigmoid else 1.0)
  p = K.match_probability(z1, z2, 2.0, 1.5, official_sigmoid=official_sigmoid)
  np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
  log_p, log_q = K.match_log_probs(z1, z2, 2.0, 1.5, official_sigmoid=official_sigmoid)
  np.testing.assert_allclose(np.exp(log_p), ref, rtol=1e-5)
  np.testing.assert_allclose(np.exp(log_q), 1.0 - ref, rtol=1e-5)
  lp2, lq2 = K.log_probs_from_log_odds(log_p - log_q)
  np.testing.assert_allclose(lp2, log_p, atol=1e-5)
  np.testing.assert_allclose(lq2, log_q, atol=1e-5)


def test_sample_gaussian_reparameterisation():
  mu = jnp.arange(6.0).reshape(2, 3)
  logsigma = jnp.full((2, 3), -1.0)
  key = jax.random.key(3)
  z = K.sample_gaussian(key, mu, logsigma, 4)
  eps = jax.random.normal(key, (2, 4, 3))
  np.testing.assert_allclose(z, mu[:, None] + eps * np.exp(-1.0), rtol=1e-6)


def test_vib_kl_and_reductions():
  mu = np.array([[0.5, -1.0]], np.float32)
  ls = np.array([[0.3, -0.7]], np.float32)
  # KL(N(mu, sigma^2) || N(0, 1)) per dimension: 0.5 (mu^2 + sigma^2 - 1) - log sigma.
  ref = np.sum(0.5 * (mu ** 2 + np.exp(2 * ls) - 1) - ls)
  np.testing.assert_allclose(K.vib_kl(mu, ls), ref, rtol=1e-6)
  z = np.stack([mu + 0.1, mu - 0.1], axis=1)   # sample mean = mu
  ref_off = -0.5 * np.sum(1 + ls - mu ** 2 - np.exp(ls))
  np.testing.assert_allclose(K.vib_kl(mu * 9, ls, z, official_kl=True), ref_off, rtol=1e-5)
  rng = np.random.default_rng(2)
  s = [rng.normal(size=(3, 2, 4)).astype(np.float32) for _ in range(2)]
  m = [l2norm(jnp.mean(x, 1)) for x in s]
  l = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
  kw = dict(mu_img=m[0], mu_txt=m[1], vib_beta=0.1)
  _, tot = pcme_losses.pcme_criterion(s[0], s[1], l[0], l[1], 1.0, 0.5, **kw)
  _, avg = pcme_losses.pcme_criterion(s[0], s[1], l[0], l[1], 1.0, 0.5, reduction="mean", **kw)
  np.testing.assert_allclose(avg["i2t_loss"], tot["i2t_loss"] / 9, rtol=1e-6)
  np.testing.assert_allclose(avg["vib_loss"], tot["vib_loss"] / 3, rtol=1e-6)


def test_uniformity_equals_loop():
  x = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
  vals = [np.exp(-2 * np.sum((x[i] - x[k]) ** 2)) for i in range(5) for k in range(i + 1, 5)]
  np.testing.assert_allclose(K.uniformity_loss(x), np.log(np.mean(vals)), rtol=1e-5)


@pytest.mark.parametrize("log_variance", [False, True])
def test_csd_hand_formula(log_variance):
  rng = np.random.default_rng(5)
  mu1, mu2 = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
  l1, l2 = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
  f = 1.0 if log_variance else 2.0
  ref = np.array([[np.sum((mu1[i] - mu2[j]) ** 2) + np.sum(np.exp(f * l1[i]) + np.exp(f * l2[j]))
                   for j in range(2)] for i in range(3)])
  out = K.closed_form_sampled_distance(*(jnp.float32(v) for v in (mu1, l1, mu2, l2)),
                                       log_variance=log_variance)
  np.testing.assert_allclose(out, ref, rtol=1e-5)


@pytest.mark.parametrize("official", [False, True])
def test_gradients_finite_for_extreme_sigma(official):
  rng = np.random.default_rng(6)
  mu_raw = [rng.normal(size=(3, 8)).astype(np.float32) for _ in range(2)]
  eps = [rng.normal(size=(3, 4, 8)).astype(np.float32) for _ in range(2)]

  def loss(mi, mc, li, lc, a, b):
    mi, mc = l2norm(mi), l2norm(mc)
    zi = mi[:, None] + eps[0] * jnp.exp(li)[:, None]
    zc = mc[:, None] + eps[1] * jnp.exp(lc)[:, None]
    return pcme_losses.pcme_criterion(zi, zc, li, lc, a, b, vib_beta=1e-3, mu_img=mi, mu_txt=mc,
                            official_sigmoid=official, official_kl=official,
                            use_uniformity=True, uniform_lambda=1.0)[0]

  ls = jnp.array([-20.0, 20.0])[:, None, None] * jnp.ones((3, 8))   # both extremes, vmapped
  val_and_grad = jax.vmap(jax.value_and_grad(loss, argnums=range(6)),
                          (None, None, 0, 0, None, None))
  val, grads = jax.jit(val_and_grad)(*mu_raw, ls, ls, 15.0, 15.0)
  assert val.shape == (2,) and np.all(np.isfinite(val))
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


# ------------------------------------------------------------------ model

def _tiny_method(score="mc", image_input="regions"):
  c = get_config(f"runlocal,score={score},image_input={image_input}")
  c.model.update(word_dim=8, embed_dim=16, pixel_dim=8, num_samples=3)
  info = DataInfo(vocab_size=20, region_dim=6, num_regions=5, image_size=(16, 16))
  return c, M.build_method(c.model, info)


def _batch(rng, n=4, r=5, length=6):
  lengths = rng.integers(2, length + 1, n)
  mask = np.arange(length)[None] < lengths[:, None]
  images = {"regions": rng.normal(size=(n, r, 6)).astype(np.float32),
            "region_mask": np.arange(r)[None] < rng.integers(2, r + 1, n)[:, None],
            "pixels": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)}
  texts = {"tokens": np.where(mask, rng.integers(1, 20, (n, length)), 0).astype(np.int32),
           "token_mask": mask}
  return images, texts


@pytest.fixture(scope="module")
def model_setup():
  c, method = _tiny_method()
  images, texts = _batch(np.random.default_rng(7))
  k = jax.random.key(0)
  (img, txt, _), variables = _init(method, images, texts)
  return c, method, variables, images, texts, img, txt


def _init(method, images, texts):
  """Variables and the encodings of the init batch, in one compile."""
  k = jax.random.key(0)
  return jax.jit(lambda i, t: method.model.init_with_output(
      {"params": k, "dropout": k, "sampling": jax.random.key(1)}, i, t, train=False))(images, texts)


def _encode(method, variables, images, texts):
  """Both sides in one apply, in __call__'s order, so the sampling draws match _init's."""
  def enc(v, i, t):
    return method.model.apply(
        v, i, t, rngs={"sampling": jax.random.key(1)},
        method=lambda m, i, t: (m.encode_images(i, train=False), m.encode_texts(t, train=False)))
  return jax.jit(enc)(variables, images, texts)


def test_encoders_mask_invariant(model_setup):
  _, method, variables, images, texts, img, txt = model_setup
  rng = np.random.default_rng(8)
  padded_img = dict(images)
  padded_img["regions"] = np.concatenate(
      [images["regions"], rng.normal(size=(4, 3, 6)).astype(np.float32) * 50], 1)
  padded_img["region_mask"] = np.concatenate([images["region_mask"], np.zeros((4, 3), bool)], 1)
  padded_txt = {"tokens": np.concatenate([texts["tokens"], rng.integers(1, 20, (4, 4))], 1)
                .astype(np.int32),
                "token_mask": np.concatenate([texts["token_mask"], np.zeros((4, 4), bool)], 1)}
  img2, txt2 = _encode(method, variables, padded_img, padded_txt)
  for a, b in zip(jax.tree.leaves((img, txt)), jax.tree.leaves((img2, txt2))):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # ... while a real region/word does change the result.
  changed_img = dict(padded_img, regions=padded_img["regions"] + 1.0)
  changed_txt = dict(padded_txt, tokens=np.where(padded_txt["token_mask"], 1, 0).astype(np.int32))
  img3, txt3 = _encode(method, variables, changed_img, changed_txt)
  assert np.abs(np.asarray(img3["mu"]) - np.asarray(img["mu"])).max() > 1e-4
  assert np.abs(np.asarray(txt3["logsigma"]) - np.asarray(txt["logsigma"])).max() > 1e-4


def test_score_tile_independent(model_setup):
  _, method, variables, images, texts, img, txt = model_setup

  @jax.jit
  def all_scores(i, t):
    models = {s: method.model.clone(score_method=s) for s in M.SCORES}
    return {s: m.apply(variables, i, t, method=m.score) for s, m in models.items()}

  full = all_scores(img, txt)
  rows, cols = np.array([2, 0]), np.array([3, 1, 2])
  sub = all_scores(jax.tree.map(lambda x: x[rows], img), jax.tree.map(lambda x: x[cols], txt))
  for s in M.SCORES:
    assert full[s].shape == (4, 4)
    np.testing.assert_allclose(sub[s], np.asarray(full[s])[rows][:, cols], rtol=1e-5, atol=1e-6,
                               err_msg=s)
  # The MC probability and its log-odds rank identically.
  np.testing.assert_allclose(jax.nn.sigmoid(full["mc_log_odds"]), full["mc"], rtol=1e-5)


def test_model_loss_equals_criterion(model_setup):
  c, method, variables, images, texts, img, txt = model_setup
  hp = {k: jnp.float32(v) for k, v in c.hparams.items()}
  hp["vib_beta"] = jnp.float32(0.01)
  assert set(method.hparam_names) <= set(hp)
  params = variables["params"]

  @jax.jit
  def loss_and_ref(a, b):
    # __call__'s scores are the MC log-odds; the loss decodes them (only a, b vary here).
    p = dict(params, negative_scale=a, shift=b)
    scores = method.model.apply({"params": p}, img, txt, method=method.model.match_log_odds)
    val, _ = method.loss_fn(img, txt, scores, hp, jax.random.key(4))
    ref, _ = pcme_losses.pcme_criterion(img["samples"], txt["samples"], img["logsigma"], txt["logsigma"],
                              a, b, vib_beta=0.01, mu_img=img["mu"], mu_txt=txt["mu"])
    return val, ref

  a0, b0 = params["negative_scale"], params["shift"]
  np.testing.assert_allclose(*loss_and_ref(a0, b0), rtol=1e-5)
  grads = jax.jacrev(loss_and_ref, argnums=(0, 1))(a0, b0)
  for g_loss, g_ref in zip(grads[0], grads[1]):   # d/da and d/db agree and are non-zero
    np.testing.assert_allclose(g_loss, g_ref, rtol=1e-4)
    assert np.abs(g_loss) > 0
  np.testing.assert_allclose(float(a0), c.model.init_negative_scale)


def test_pixel_input_encodes():
  _, method = _tiny_method(image_input="pixels")
  images, texts = _batch(np.random.default_rng(9), n=2)
  img, _ = jax.jit(lambda i: method.model.init_with_output(
      {"params": jax.random.key(0), "sampling": jax.random.key(1)}, i, train=False,
      method=method.model.encode_images))(images)
  assert img["samples"].shape == (2, 3, 16)
  np.testing.assert_allclose(np.linalg.norm(img["mu"], axis=-1), 1.0, rtol=1e-5)


def test_training_writes_the_uncertainty_plot(tiny_data_dir, tmp_path):
  import json
  import os
  from conftest import train_tiny
  workdir = str(tmp_path / "pcme")
  res = train_tiny("pcme", tiny_data_dir, workdir, embed_dim=16, word_dim=8)
  assert "pmrp" in res
  with open(os.path.join(workdir, "eval", "uncertainty.json")) as f:
    unc = json.load(f)
  assert len(unc["per_item"]["image"]) == 12 and len(unc["per_item"]["text"]) == 60
  assert sum(unc["recall_by_bin"]["i2t (image uncertainty)"]["count"]) == 12
  assert os.path.getsize(os.path.join(workdir, "plots", "uncertainty.png")) > 1000
