"""Triplet ranking losses on a (B, B) score matrix: VSE++, SGRAF, MMCA (and DeFrag's C_G)."""
import jax
import jax.numpy as jnp
from xmr_jax.common.errors import ConfigError


def triplet_ranking_loss(scores: jax.Array, margin, *, max_violation: bool = True,
                         reduction: str = "sum", positive_mask: jax.Array = None) -> jax.Array:
  """Bidirectional hinge triplet loss on a (B, B) score matrix whose diagonal holds the pairs.

  VSE++ (Faghri et al. 2018, eq. 5 for ``max_violation``; eq. 3 for the sum over negatives),
  reused by SCAN, SGRAF (Paranioar/SGRAF ``ContrastiveLoss``) and MMCA (eq. 15):

    cost_s[i, j]  = max(0, margin + s[i, j] - s[i, i])   caption j as negative for image i
    cost_im[i, j] = max(0, margin + s[i, j] - s[j, j])   image i as negative for caption j

  The diagonal is zeroed. ``positive_mask`` (B, B), if given, marks extra true pairs (e.g. two
  captions of the same image in one batch) that are also excluded as negatives; the official
  code does not do this (it only masks the diagonal). ``reduction='sum'`` follows the
  official code; ``'mean'`` divides by B.
  """
  b = scores.shape[0]
  diag = jnp.diagonal(scores)
  cost_s = jnp.maximum(0.0, margin + scores - diag[:, None])
  cost_im = jnp.maximum(0.0, margin + scores - diag[None, :])
  exclude = jnp.eye(b, dtype=bool)
  if positive_mask is not None:
    exclude = exclude | positive_mask.astype(bool)
  cost_s = jnp.where(exclude, 0.0, cost_s)
  cost_im = jnp.where(exclude, 0.0, cost_im)
  if max_violation:
    cost_s = jnp.max(cost_s, axis=1)
    cost_im = jnp.max(cost_im, axis=0)
  total = jnp.sum(cost_s) + jnp.sum(cost_im)
  if reduction == "sum":
    return total
  if reduction == "mean":
    return total / b
  raise ConfigError(f"triplet_ranking_loss: unknown reduction {reduction!r} (use 'sum' or 'mean')")


def triplet_loss_with_warmup(scores: jax.Array, hparams, *, reduction: str = "sum"):
  """Hardest-negative triplet loss, with an optional sum-over-negatives warm-up.

  Returns ``(loss, metrics)``. While ``hparams['epoch'] < hparams['hardneg_warmup_epochs']``
  the loss is the sum over all negatives (VSE++ eq. 3; VSE∞'s ``vse_mean_warmup_epochs``),
  afterwards the hardest negative (eq. 5). Without ``hardneg_warmup_epochs`` in ``hparams``
  it is the hardest-negative loss throughout, as the official VSE++/SGRAF/MMCA code. Both
  scalars are traced, so a schedule or a sweep over them never recompiles.
  """
  margin = hparams["margin"]
  hard = triplet_ranking_loss(scores, margin, max_violation=True, reduction=reduction)
  if "hardneg_warmup_epochs" not in hparams:
    return hard, {}
  warm = hparams.get("epoch", jnp.float32(0)) < hparams["hardneg_warmup_epochs"]
  summed = triplet_ranking_loss(scores, margin, max_violation=False, reduction=reduction)
  return jnp.where(warm, summed, hard), {"hard_negatives": 1.0 - warm.astype(jnp.float32)}


def triplet_objective(*, max_violation: bool = True, reduction: str = "sum",
                      report_positive: bool = False):
  """``loss_fn(img, txt, scores, hparams, rng) -> (loss, metrics)`` for the trainer.

  ``max_violation``: the hardest-negative loss (VSE++ eq. 5, official VSE++/SGRAF
  ``ContrastiveLoss(max_violation=True)``, MMCA eq. 15) with the optional sum-over-negatives
  warm-up of :func:`triplet_loss_with_warmup`; else the sum over negatives throughout (VSE0,
  eq. 3). Reads ``hparams['margin']`` (and ``hardneg_warmup_epochs``, ``epoch``).
  ``report_positive`` adds ``pos_score``, the mean score of the true pairs (SGRAF logs it:
  its sigmoid scores show a collapse as a constant).
  """
  def loss_fn(img, txt, scores, hparams, rng):
    del img, txt, rng
    if max_violation:
      loss, metrics = triplet_loss_with_warmup(scores, hparams, reduction=reduction)
    else:
      loss, metrics = triplet_ranking_loss(scores, hparams["margin"], max_violation=False,
                                           reduction=reduction), {}
    if report_positive:
      metrics = dict(metrics, pos_score=jnp.mean(jnp.diagonal(scores)))
    return loss, metrics
  return loss_fn
