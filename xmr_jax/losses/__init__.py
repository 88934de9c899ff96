"""Training losses, one place for every method, built from ``xmr_jax.kernels``.

Every ``*_objective`` / ``make_*`` here returns ``loss_fn(img, txt, scores, hparams, rng) ->
(loss, metrics)``, the ``Method.loss_fn`` the trainer differentiates: ``scores`` is the (B, B)
training matrix (``Method.train_score``), ``img``/``txt`` the batch's encoded reprs and
``hparams`` the swept-scalar pytree. Losses import kernels; kernels never import losses.
"""
from xmr_jax.losses.triplet import (triplet_loss_with_warmup, triplet_objective,
                                    triplet_ranking_loss)

__all__ = ["triplet_loss_with_warmup", "triplet_objective", "triplet_ranking_loss"]
