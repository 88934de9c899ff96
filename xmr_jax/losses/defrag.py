"""DeFrag's objective: fragment alignment C_F (eq. 5-6, with MIL) + beta global ranking C_G (eq. 9).

Karpathy, Joulin, Fei-Fei, NIPS 2014 (arXiv 1406.5679) section 3.3, checked against
bbugs/DeepFashion ``matlab_code/DeFragCost.m``. The fragment math is in
``xmr_jax.kernels.fragments``.
"""
import math

import jax
import jax.numpy as jnp

from xmr_jax.kernels import fragments as K
from xmr_jax.losses.triplet import triplet_ranking_loss
from xmr_jax.common.errors import ConfigError

OBJECTIVES = ("full", "fragment_only", "global_only")


def global_ranking_loss(sim: jax.Array, margin) -> jax.Array:
  """Global ranking objective C_G (paper eq. 9) on the (B, B) matrix S_kl, diagonal = pairs.

  sum_k [sum_l max(0, S_lk - S_kk + margin) + sum_l max(0, S_kl - S_kk + margin)], both
  directions summed over every negative (DeFragCost.m ``gcost``: no hardest negative).
  """
  return triplet_ranking_loss(sim, margin, max_violation=False, reduction="sum")


def make_loss(objective: str, use_mil: bool, mil_start_epoch: float, global_start_epoch: float):
  """loss_fn(img, txt, scores, hparams, rng): C_F + beta C_G with the epoch schedule.

  hparams: ``margin`` (Delta of C_G), ``global_weight`` (beta), ``fragment_margin`` (the 1 of
  eq. 5, DeFragCost.m ``lmargin``) and, from the trainer, ``epoch``.
  """
  if objective not in OBJECTIVES:
    raise ConfigError(f"DeFrag: objective={objective!r}; choose one of {OBJECTIVES}")

  def loss_fn(img, txt, scores, hparams, rng):
    del rng
    epoch = hparams.get("epoch", jnp.asarray(math.inf, jnp.float32))
    mil_on = jnp.logical_and(use_mil, epoch >= mil_start_epoch)
    global_on = (epoch >= global_start_epoch).astype(jnp.float32)
    dots = K.fragment_scores(img["frags"], txt["frags"])
    c_f, y = K.fragment_alignment_loss(dots, img["mask"], txt["mask"], mil=mil_on,
                                       margin=hparams["fragment_margin"])
    c_g = global_ranking_loss(scores, hparams["margin"])
    if objective == "fragment_only":
      loss = c_f
    elif objective == "global_only":
      loss = c_g
    else:
      loss = c_f + global_on * hparams["global_weight"] * c_g
    b = scores.shape[0]
    metrics = {"fragment_loss": c_f, "global_loss": c_g, "mil_on": mil_on.astype(jnp.float32),
               "pos_score_mean": jnp.trace(scores) / b}
    return loss, metrics

  return loss_fn
