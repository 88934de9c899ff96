"""PCME kernels: Gaussian sampling, Monte-Carlo match probability, soft contrastive loss, VIB.

Chun et al., "Probabilistic Embeddings for Cross-Modal Retrieval", CVPR 2021 (PCME), and the
closed-form sampled distance of PCME++ (Chun, ICLR 2024). Every item is a Gaussian
N(mu, diag(sigma^2)) in R^D represented by J samples z = mu + eps * sigma (eq. 2, the
reparameterisation trick). The match probability of two items (eq. 3) is the Monte-Carlo mean

    p(m | x, y) = 1/J^2 sum_{j, j'} sigmoid(-a ||z_x^j - z_y^j'||_2 + b),

and the loss (eq. 4-6) is the soft contrastive NLL over every pair of the batch plus beta times
the VIB KL term (eq. 7).

Official quirks (naver-ai/pcme ``criterions/probemb.py``), each a named option whose default is
the paper's intent:

* ``official_sigmoid``: the official "sigmoid" is e^s / (e^s + e^-s) = sigmoid(2 s), so its
  logits are effectively doubled (2a, 2b).
* ``official_kl``: sampling uses exp(logsigma) as the *standard deviation*
  (``utils/tensor_utils.sample_gaussian_tensors``) but the KL reads logsigma as a
  *log-variance*, and takes the mean of the J samples in place of mu.
* ``reduction``: the official criterion's ``reduction`` argument is stored but never used;
  it always sums over pairs and items ('sum', which is also what its configs ask for).
  'mean' divides the match terms by the B^2 pairs and the KL by the B items.
* a and b (``negative_scale``, ``shift``) live in the official criterion, whose parameters
  are given to the optimiser but not to ``clip_grad_norm_(model.parameters())``
  (``engine/trainer.py``), so they are never gradient-clipped. See
  ``xmr_jax.models.pcme.UNCLIPPED_PARAMS``.

Distances for all B x B pairs of J samples come from one GEMM of (B*J, D) x (D, B*J) through
||z||^2 + ||z'||^2 - 2 z.z'; the B x B x J x J x D difference tensor is never formed.
"""
from typing import Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def sample_gaussian(key: Array, mu: Array, logsigma: Array, num_samples: int) -> Array:
  """J reparameterised samples (eq. 2): ``mu[:, None] + eps * exp(logsigma)[:, None]``.

  ``mu``, ``logsigma``: (N, D); returns (N, J, D). exp(logsigma) is the standard deviation
  here in both the paper and the official code (``sample_gaussian_tensors``).
  """
  eps = jax.random.normal(key, (mu.shape[0], num_samples, mu.shape[-1]), mu.dtype)
  return mu[:, None, :] + eps * jnp.exp(logsigma)[:, None, :]


def _gram(f1: Array, f2: Array, dtype) -> Tuple[Array, Array, Array]:
  """(||f1||^2, ||f2||^2, f1 f2^T) in float32. With ``dtype`` (bfloat16) the rows are rounded
  to it first and the norms are taken of the *rounded* rows, so the norm expansion is the exact
  distance of the rounded points (no cancellation of inconsistently rounded terms)."""
  if dtype is None:
    # Same equations in the same order as before (float32 gradients stay bit-identical).
    sq1 = jnp.sum(f1 * f1, axis=-1)
    sq2 = jnp.sum(f2 * f2, axis=-1)
    # Full float32 GEMM: TF32/bf16 passes would swamp the small sample distances.
    gram = jnp.dot(f1, f2.T, precision=jax.lax.Precision.HIGHEST)
    return sq1, sq2, gram
  r1, r2 = f1.astype(dtype), f2.astype(dtype)
  sq = lambda r: jnp.sum(jnp.square(r.astype(jnp.float32)), axis=-1)
  return sq(r1), sq(r2), jnp.dot(r1, r2.T, preferred_element_type=jnp.float32)


def pairwise_sample_distances(z1: Array, z2: Array, eps: float = 1e-6, dtype=None) -> Array:
  """sqrt(||z1[n, j] - z2[m, k]||^2 + eps) for all pairs: (N, J, D), (M, K, D) -> (N, M, J, K).

  One GEMM over the flattened samples via the squared-norm expansion; the squared distance
  is clamped at 0 against cancellation. ``eps`` inside the root follows the official
  ``batchwise_cdist`` (1e-6) and keeps the gradient finite at zero distance. ``dtype``
  (bfloat16, ``model.dtype``): distances of the samples rounded to it, float32 accumulation.
  """
  n, j, d = z1.shape
  m, k, _ = z2.shape
  sq1, sq2, gram = _gram(z1.reshape(n * j, d), z2.reshape(m * k, d), dtype)
  d2 = jnp.maximum(sq1[:, None] + sq2[None, :] - 2.0 * gram, 0.0)
  dist = jnp.sqrt(d2 + eps)
  return dist.reshape(n, j, m, k).transpose(0, 2, 1, 3)


def match_logits(z1: Array, z2: Array, a, b, *, official_sigmoid: bool = False,
                 eps: float = 1e-6, dtype=None) -> Array:
  """Per-sample-pair logits s = -a ||z - z'|| + b (eq. 3), (N, M, J, K).

  With ``official_sigmoid`` the logits are doubled, so that sigmoid(returned) equals the
  official e^s / (e^s + e^-s). ``dtype``: the GEMM's operand dtype (None = float32).
  """
  s = -a * pairwise_sample_distances(z1, z2, eps, dtype) + b
  return 2.0 * s if official_sigmoid else s


def match_log_probs(z1: Array, z2: Array, a, b, *, official_sigmoid: bool = False,
                    eps: float = 1e-6, dtype=None) -> Tuple[Array, Array]:
  """(log p, log(1 - p)) of the MC match probability (eq. 3) for all pairs, each (N, M).

  Stable in log space: log p = logsumexp_{j,k} log_sigmoid(s_jk) - log J K and
  log(1 - p) = logsumexp_{j,k} log_sigmoid(-s_jk) - log J K (official ``soft_contrastive_nll``).
  """
  s = match_logits(z1, z2, a, b, official_sigmoid=official_sigmoid, eps=eps, dtype=dtype)
  log_count = jnp.log(float(s.shape[-2] * s.shape[-1]))
  log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(s), axis=(-2, -1)) - log_count
  log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-s), axis=(-2, -1)) - log_count
  return log_p, log_q


def match_probability(z1: Array, z2: Array, a, b, *, official_sigmoid: bool = False,
                      eps: float = 1e-6, dtype=None) -> Array:
  """MC match probability p(m | x, y) (eq. 3) for all N x M pairs: mean of J*K sigmoids.
  ``dtype``: the distance GEMM's operand dtype (None = float32; ``match_logits``)."""
  s = match_logits(z1, z2, a, b, official_sigmoid=official_sigmoid, eps=eps, dtype=dtype)
  return jnp.mean(jax.nn.sigmoid(s), axis=(-2, -1))


def soft_contrastive_terms(log_p: Array, log_q: Array,
                           positive_mask: Array = None) -> Tuple[Array, Array]:
  """Summed soft contrastive NLL (eq. 4) of the positive and of the negative pairs.

  -log p for matched pairs (the diagonal, or ``positive_mask``), -log(1 - p) for the rest.
  """
  if positive_mask is None:
    positive_mask = jnp.eye(log_p.shape[0], log_p.shape[1], dtype=bool)
  pos = -jnp.sum(jnp.where(positive_mask, log_p, 0.0))
  neg = -jnp.sum(jnp.where(positive_mask, 0.0, log_q))
  return pos, neg


def log_probs_from_log_odds(log_odds: Array) -> Tuple[Array, Array]:
  """(log p, log(1 - p)) from L = log p - log(1 - p): (-softplus(-L), -softplus(L))."""
  return -jax.nn.softplus(-log_odds), -jax.nn.softplus(log_odds)


def vib_kl(mu: Array, logsigma: Array, samples: Array = None, *,
           official_kl: bool = False) -> Array:
  """KL(N(mu, sigma^2) || N(0, I)) summed over dimensions and items (VIB, eq. 7).

  Paper intent: 0.5 * sum(mu^2 + sigma^2 - 1 - 2 log sigma) with sigma = exp(logsigma).
  ``official_kl``: the official ``kl_divergence`` reads logsigma as log sigma^2 and uses the
  mean of the J samples (``samples`` (N, J, D)) for mu:
  -0.5 * sum(1 + logsigma - mean_j(z)^2 - exp(logsigma)).
  """
  if official_kl:
    m = jnp.mean(samples, axis=1) if samples is not None else mu
    return -0.5 * jnp.sum(1.0 + logsigma - m * m - jnp.exp(logsigma))
  return 0.5 * jnp.sum(mu * mu + jnp.exp(2.0 * logsigma) - 1.0 - 2.0 * logsigma)


def uniformity_loss(x: Array, t: float = 2.0) -> Array:
  """log mean_{i<k} exp(-t ||x_i - x_k||^2) over the rows of ``x`` (N, D) (Wang & Isola 2020).

  The official ``uniform_loss`` (CUB config) applies this to every sample of both modalities
  via ``torch.pdist``; it subsamples 128 rows with replacement when N^2 > 16384 to dodge a
  CUDA bug, which we do not: all N(N-1)/2 pairs enter, through one GEMM.
  """
  sq = jnp.sum(x * x, axis=-1)
  gram = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  n = x.shape[0]
  upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
  logits = jnp.where(upper, -t * d2, -jnp.inf)
  return jax.nn.logsumexp(logits) - jnp.log(n * (n - 1) / 2.0)


def closed_form_sampled_distance(mu1: Array, logsigma1: Array, mu2: Array, logsigma2: Array,
                                 *, log_variance: bool = False, dtype=None) -> Array:
  """PCME++ closed-form sampled distance (CSD, PCME++ eq. 1) for all N x M pairs.

  CSD = E ||z1 - z2||^2 = ||mu1 - mu2||^2 + ||sigma1^2 + sigma2^2||_1, with
  sigma^2 = exp(2 logsigma), or exp(logsigma) when ``log_variance`` (PCME++'s ``std`` output,
  and PCME's official KL reading). Lower = closer; one GEMM via the norm expansion
  (``dtype``: its operand dtype, None = float32, as ``pairwise_sample_distances``).
  """
  var1 = jnp.exp(logsigma1 if log_variance else 2.0 * logsigma1)
  var2 = jnp.exp(logsigma2 if log_variance else 2.0 * logsigma2)
  sq1, sq2, gram = _gram(mu1, mu2, dtype)
  mu_d2 = jnp.maximum(sq1[:, None] + sq2[None, :] - 2.0 * gram, 0.0)
  return mu_d2 + jnp.sum(var1, -1)[:, None] + jnp.sum(var2, -1)[None, :]
