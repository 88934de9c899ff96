"""Variable region counts: every method ignores regions its ``region_mask`` marks as padding.

Real photos with detected boxes have different numbers of regions (boxes + the whole image),
padded to a fixed R with a mask. Whatever the padded slots hold, encodings and scores must not
change; and the mask must matter (dropping a real region changes the scores)."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from xmr_jax.training import loop, state as state_lib
from xmr_jax.types import image_inputs, text_inputs

METHODS = {
    "vsepp": dict(embed_dim=16, word_dim=8),
    "pcme": dict(embed_dim=16, word_dim=8, num_samples=3),
    "defrag": dict(embed_dim=16, word_dim=8),
    "sgraf": dict(embed_dim=8, word_dim=6, sim_dim=6, sgr_steps=2),
    "mmca": dict(embed_dim=16, word_dim=8),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_padded_regions_never_change_a_score(tiny_data_dir, name):
  config = tiny_config(name, tiny_data_dir, **METHODS[name])
  ds, method, _, _, state = loop.setup(config)
  variables = state_lib.variables_of(state)
  batch = ds.sample_batch(8)
  images, texts = image_inputs(batch), text_inputs(batch)
  r = images["regions"].shape[1]
  mask = np.ones(images["region_mask"].shape, bool)
  counts = np.array([r, r - 3, r - 7, 5, r - 1, 9, r - 12, 2])   # real regions per image
  mask = np.arange(r)[None, :] < counts[:, None]
  noise = np.random.default_rng(0).normal(size=images["regions"].shape).astype(np.float32) * 50

  def scores(regions, region_mask):
    imgs = dict(images, regions=regions, region_mask=region_mask)
    run = lambda module: module.score(module.encode_images(imgs, train=False),
                                      module.encode_texts(texts, train=False))
    return np.asarray(method.model.apply(variables, method=run, rngs={
        "sampling": jax.random.key(0), "dropout": jax.random.key(1)}))

  base = scores(images["regions"], mask)
  garbage = np.where(mask[..., None], images["regions"], noise)
  np.testing.assert_allclose(scores(garbage, mask), base, rtol=1e-5, atol=1e-5)
  # The mask is read: hiding one more real region of image 0 changes its scores.
  fewer = mask.copy()
  fewer[0, 0] = False
  assert not np.allclose(scores(images["regions"], fewer)[0], base[0], atol=1e-6)


def test_an_all_zero_region_keeps_the_gradient_finite():
  """A real region whose features are all zero (a flat black cell of a grid extraction) maps
  through fc's zero initial bias to a zero vector; l2norm's gradient there must be finite
  (the official formula's is 0 * inf = NaN, which stopped SGRAF at its first step), and its
  values must stay the official X / (sqrt(sum X^2) + eps)."""
  import jax.numpy as jnp
  from xmr_jax.kernels.common import EPS, l2norm
  from xmr_jax.models.encoders import RegionEncoder
  x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  np.testing.assert_allclose(l2norm(x), x / (np.sqrt((x * x).sum(-1, keepdims=True)) + EPS),
                             rtol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(l2norm(v) * jnp.arange(1.0, 6.0)))(jnp.zeros((1, 5)))
  assert np.isfinite(np.asarray(grad)).all()
  regions = np.random.default_rng(1).uniform(0, 6, size=(2, 4, 7)).astype(np.float32)
  regions[1, 2] = 0.0                       # real (mask true), all zero
  mask = np.ones((2, 4), bool)
  enc = RegionEncoder(embed_dim=3)
  params = enc.init(jax.random.PRNGKey(0), regions, mask)
  g = jax.grad(lambda p: jnp.sum(enc.apply(p, regions, mask) ** 3))(params)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))
