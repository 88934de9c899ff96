"""Encoders shared by several methods: regions, bi-GRU text, small pixel CNN.

Padding is masked everywhere: padded regions/words come out as exact zeros and never
influence real positions.
"""
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmr_jax.common.errors import ConfigError
from xmr_jax.kernels.common import l2norm
from xmr_jax.models.precision import conv_kwargs, dense_kwargs, gru_cell


class RegionEncoder(nn.Module):
  """FC over precomputed region features, then per-region l2 norm.

  SCAN/SGRAF ``EncoderImagePrecomp``: ``fc`` initialised with Xavier-uniform bounds
  sqrt(6)/sqrt(in + out) and zero bias, then ``l2norm`` unless ``normalize`` is False.
  """
  embed_dim: int
  normalize: bool = True
  dtype: str = "float32"          # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, regions: jax.Array, region_mask: jax.Array) -> jax.Array:
    x = nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_uniform(),
                 name="fc", **dense_kwargs(self.dtype))(regions.astype(jnp.float32))
    if self.normalize:
      x = l2norm(x)
    return x * region_mask[..., None].astype(x.dtype)


def word_embedding_init(word_vectors: Optional[np.ndarray], fallback: Callable):
  """The initialiser of a (vocab_size, word_dim) word embedding table.

  ``word_vectors`` (vocab_size, word_dim) float32 (``DataInfo.word_vectors``, from
  ``data.word_embeddings`` or ``data.word_vectors``) are copied in; without them ``fallback(key, shape, dtype)`` draws
  the method's random init. Raises ValueError when the vectors' shape differs from the table's
  (a GloVe file of another dimension than ``model.word_dim``): never a silent random init.
  """
  if word_vectors is None:
    return fallback
  table = np.asarray(word_vectors, np.float32)

  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(table.shape) != tuple(shape):
      raise ConfigError(
          f"data.word_embeddings / data.word_vectors give vectors of shape {table.shape} but "
          f"the model's word embedding is {tuple(shape)} (vocab_size, model.word_dim); set "
          f"model.word_dim={table.shape[1]} or use vectors of dimension {shape[1]}")
    return jnp.asarray(table, dtype)
  return init


def uniform_init(scale: float) -> Callable:
  """U(-scale, scale), SCAN/SGRAF/VSE++'s word-embedding init (``uniform_(-0.1, 0.1)``)."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -scale, scale)


class GRUTextEncoder(nn.Module):
  """Word embedding + (bi-)GRU; per-word outputs (B, L, D).

  As SCAN/SGRAF ``EncoderText``: with ``bidirectional`` the forward and backward outputs are
  averaged (not concatenated), then each word vector is l2-normalised. Sequences are run with
  their true lengths, so the backward direction starts at the last real word and padding never
  enters a real position's state. ``word_vectors`` (vocab_size, word_dim) initialises the
  embedding (e.g. from a local GloVe file, see ``xmr_jax.data.embeddings``).
  """
  vocab_size: int
  word_dim: int
  embed_dim: int
  num_layers: int = 1
  bidirectional: bool = True
  normalize: bool = True
  word_vectors: Optional[np.ndarray] = None
  dropout: float = 0.0
  dtype: str = "float32"          # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, tokens: jax.Array, token_mask: jax.Array, *, train: bool) -> jax.Array:
    emb = nn.Embed(self.vocab_size, self.word_dim, embedding_init=word_embedding_init(
                       self.word_vectors, uniform_init(0.1)),
                   name="embed")(tokens)
    emb = nn.Dropout(self.dropout, deterministic=not train)(emb)
    lengths = jnp.sum(token_mask.astype(jnp.int32), axis=-1)
    x = emb
    for layer in range(self.num_layers):
      fwd = nn.RNN(gru_cell(self.embed_dim, self.dtype),
                   name=f"gru_fwd_{layer}")(x, seq_lengths=lengths)
      if self.bidirectional:
        bwd = nn.RNN(gru_cell(self.embed_dim, self.dtype), reverse=True, keep_order=True,
                     name=f"gru_bwd_{layer}")(x, seq_lengths=lengths)
        # Stacked layers see both directions concatenated (torch nn.GRU semantics); only the
        # final output averages them, as SCAN's EncoderText.
        x = jnp.concatenate([fwd, bwd], -1) if layer + 1 < self.num_layers else (fwd + bwd) / 2
      else:
        x = fwd
    if self.normalize:
      x = l2norm(x)
    return x * token_mask[..., None].astype(x.dtype)


def last_valid(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x[b, length_b - 1] for each row: the final state of a forward RNN (VSE++ ``EncoderText``)."""
  idx = jnp.maximum(jnp.sum(mask.astype(jnp.int32), -1) - 1, 0)
  return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]


class PixelCNN(nn.Module):
  """A small conv net over uint8 pixels: (B, H, W, 3) -> (B, N, D) grid "regions".

  Stands in for the ImageNet backbones of the papers on the synthetic benchmark's rendered
  scenes: three stride-2 3x3 convolutions, so a 64x64 image gives an 8x8 grid (N = 64).
  """
  embed_dim: int
  channels: tuple = (32, 64, 128)
  dtype: str = "float32"          # model.dtype (models/precision.py)

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = pixels.astype(jnp.float32) / 127.5 - 1.0
    for i, ch in enumerate(self.channels):
      x = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), name=f"conv{i}",
                          **conv_kwargs(self.dtype))(x))
    b, h, w, c = x.shape
    proj = nn.Dense(self.embed_dim, name="proj", **dense_kwargs(self.dtype))
    return proj(x.reshape(b, h * w, c))
