"""PCME's objective: soft contrastive loss (eq. 4-6) + beta VIB (eq. 7) [+ uniformity].

Built from the math in ``xmr_jax.kernels.pcme`` (match probabilities, soft contrastive terms,
VIB KL, uniformity); the official counterpart is naver-ai/pcme ``criterions/probemb.py``
``MCSoftContrastiveLoss``. Official quirks (``official_sigmoid``, ``official_kl``, the unused
``reduction``) are documented in the kernels module.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from xmr_jax.kernels import pcme as K
from xmr_jax.kernels.pcme import soft_contrastive_terms, uniformity_loss, vib_kl, match_log_probs
from xmr_jax.common.errors import ConfigError

Array = jax.Array


def pcme_loss_from_log_probs(log_p: Array, log_q: Array, mu_img: Array, logsigma_img: Array,
                             samples_img: Array, mu_txt: Array, logsigma_txt: Array,
                             samples_txt: Array, *, vib_beta, uniform_lambda=0.0,
                             official_kl: bool = False, reduction: str = "sum",
                             use_uniformity: bool = False) -> Tuple[Array, Dict[str, Array]]:
  """Total PCME loss (eq. 6 + beta * eq. 7 [+ lambda * uniformity]) given (B, B) log p, log(1-p).

  The image->text and text->image losses run over the same B^2 pairs with a symmetric
  distance, so they are equal (naver-ai/pcme issue #3); both are counted, as officially.
  """
  if reduction not in ("sum", "mean"):
    raise ConfigError(f"pcme loss: unknown reduction {reduction!r} (use 'sum' or 'mean')")
  pos, neg = soft_contrastive_terms(log_p, log_q)
  vib = (vib_kl(mu_img, logsigma_img, samples_img, official_kl=official_kl)
         + vib_kl(mu_txt, logsigma_txt, samples_txt, official_kl=official_kl))
  if reduction == "mean":
    pos, neg = pos / log_p.size, neg / log_p.size
    vib = vib / samples_img.shape[0]
  match = pos + neg
  loss = 2.0 * match + vib_beta * vib
  metrics = {"i2t_loss": match, "t2i_loss": match, "i2t_pos_loss": pos, "i2t_neg_loss": neg,
             "t2i_pos_loss": pos, "t2i_neg_loss": neg, "vib_loss": vib}
  if use_uniformity:
    d = samples_img.shape[-1]
    uni = uniformity_loss(jnp.concatenate([samples_img.reshape(-1, d),
                                           samples_txt.reshape(-1, d)]))
    loss = loss + uniform_lambda * uni
    metrics["uniform_loss"] = uni
  metrics["loss"] = loss
  return loss, metrics


def pcme_criterion(samples_img: Array, samples_txt: Array, logsigma_img: Array,
                   logsigma_txt: Array, a, b, *, vib_beta, uniform_lambda=0.0,
                   mu_img: Array = None, mu_txt: Array = None, official_sigmoid: bool = False,
                   official_kl: bool = False, reduction: str = "sum",
                   use_uniformity: bool = False,
                   eps: float = 1e-6) -> Tuple[Array, Dict[str, Array]]:
  """The full PCME criterion from samples (official ``MCSoftContrastiveLoss.forward``).

  ``samples_*`` (B, J, D) with pair i matching i; ``mu_*`` (B, D) are the distribution means
  (needed unless ``official_kl``, which uses the sample means).
  """
  log_p, log_q = match_log_probs(samples_img, samples_txt, a, b,
                                 official_sigmoid=official_sigmoid, eps=eps)
  if mu_img is None or mu_txt is None:
    if not official_kl:
      raise ConfigError("pcme_criterion: pass mu_img and mu_txt unless official_kl=True")
  return pcme_loss_from_log_probs(
      log_p, log_q, mu_img, logsigma_img, samples_img, mu_txt, logsigma_txt, samples_txt,
      vib_beta=vib_beta, uniform_lambda=uniform_lambda, official_kl=official_kl,
      reduction=reduction, use_uniformity=use_uniformity)



def make_loss_fn(*, official_kl: bool = False, reduction: str = "sum",
                 use_uniformity: bool = False):
  """PCME loss (eq. 6 + beta VIB [+ lambda uniformity]) over the (B, B) match log-odds.

  ``scores`` must come from ``PCME.__call__`` (log p - log(1 - p)); log p and log(1 - p) are
  recovered exactly as -softplus(-L) and -softplus(L). Reads ``hparams['vib_beta']`` and
  ``hparams['uniform_lambda']``.
  """
  def loss_fn(img, txt, scores, hparams, rng):
    del rng
    log_p, log_q = K.log_probs_from_log_odds(scores)
    return pcme_loss_from_log_probs(
        log_p, log_q, img["mu"], img["logsigma"], img["samples"], txt["mu"], txt["logsigma"],
        txt["samples"], vib_beta=hparams["vib_beta"],
        uniform_lambda=hparams.get("uniform_lambda", 0.0), official_kl=official_kl,
        reduction=reduction, use_uniformity=use_uniformity)
  return loss_fn
