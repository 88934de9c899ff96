"""Triplet ranking loss against hand-computed values."""
import numpy as np
import pytest

from xmr_jax.losses import triplet_ranking_loss

# 2 images x 2 captions, diagonal = true pairs.
S = np.array([[0.5, 0.4],
              [0.6, 0.1]], np.float32)
# margin 0.2:
# cost_s (caption j as negative for image i): i=0,j=1: 0.2+0.4-0.5=0.1 ; i=1,j=0: 0.2+0.6-0.1=0.7
# cost_im (image i as negative for caption j): j=0,i=1: 0.2+0.6-0.5=0.3 ; j=1,i=0: 0.2+0.4-0.1=0.5
# sum over all negatives: 0.1+0.7+0.3+0.5 = 1.6; hardest: same (one negative each) = 1.6


def test_two_by_two_sum_and_max_agree_with_hand_values():
  assert float(triplet_ranking_loss(S, 0.2, max_violation=False)) == pytest.approx(1.6, abs=1e-6)
  assert float(triplet_ranking_loss(S, 0.2, max_violation=True)) == pytest.approx(1.6, abs=1e-6)
  assert float(triplet_ranking_loss(S, 0.2, reduction="mean")) == pytest.approx(0.8, abs=1e-6)


def test_three_by_three_hardest_negative_picks_the_max():
  s = np.array([[0.9, 0.8, 0.1],
                [0.0, 0.5, 0.45],
                [0.3, 0.2, 0.7]], np.float32)
  # Row hinge (margin 0.1) for image 0: negatives 0.8, 0.1 -> costs 0.0, 0.0 (0.1+0.8-0.9=0)
  # image 1: 0.0, 0.45 -> 0.1+0.0-0.5<0 -> 0 ; 0.1+0.45-0.5=0.05 ; hardest 0.05, sum 0.05
  # image 2: 0.3, 0.2 -> 0.1+0.3-0.7<0 ; 0.1+0.2-0.7<0 -> 0
  # Column hinge for caption 0 (diag .9): 0.0, 0.3 -> 0 ; caption 1 (diag .5): 0.8->0.4, 0.2->0
  #   hardest 0.4 sum 0.4 ; caption 2 (diag .7): 0.1->0, 0.45->0 -> 0
  assert float(triplet_ranking_loss(s, 0.1, max_violation=True)) == pytest.approx(0.45, abs=1e-6)
  assert float(triplet_ranking_loss(s, 0.1, max_violation=False)) == pytest.approx(0.45, abs=1e-6)
  # margin 0.3: image 0 row: 0.3+0.8-0.9=0.2, 0.3+0.1-.9<0 ; image1: 0.3+0-.5<0, 0.25 ;
  # image2: 0.3+0.3-0.7<0, <0 -> row hardest 0.2+0.25 = 0.45, row sum 0.45
  # col0: 0.3+0-0.9<0, 0.3+0.3-0.9<0 ; col1: 0.3+0.8-0.5=0.6, 0.3+0.2-0.5=0 ; col2: 0.3+0.1-.7<0,
  #   0.3+0.45-0.7=0.05 -> col hardest 0.6+0.05, col sum 0.65
  assert float(triplet_ranking_loss(s, 0.3, max_violation=True)) == pytest.approx(1.1, abs=1e-6)
  # s2[2, 1] = 0.45 adds a second violator in column 1 (0.3+0.45-0.5 = 0.25, not the hardest)
  # and one in row 2 (0.3+0.45-0.7 = 0.05, the only one there):
  #   hardest: rows 0.2+0.25+0.05, cols 0.6+0.05 -> 1.15 ; sum: rows 0.5, cols 0.6+0.25+0.05 -> 1.4
  s2 = s.copy(); s2[2, 1] = 0.45
  assert float(triplet_ranking_loss(s2, 0.3, max_violation=True)) == pytest.approx(1.15, abs=1e-6)
  assert float(triplet_ranking_loss(s2, 0.3, max_violation=False)) == pytest.approx(1.4, abs=1e-6)


def test_positive_mask_excludes_extra_true_pairs():
  s = np.array([[0.5, 0.9], [0.9, 0.5]], np.float32)
  both = np.ones((2, 2), bool)
  assert float(triplet_ranking_loss(s, 0.2, positive_mask=both)) == 0.0
  assert float(triplet_ranking_loss(s, 0.2)) == pytest.approx(4 * 0.6, abs=1e-6)


def test_unknown_reduction_is_an_error():
  with pytest.raises(ValueError, match="reduction"):
    triplet_ranking_loss(S, 0.2, reduction="avg")


def test_warmup_switches_from_sum_to_hardest_at_the_epoch():
  from xmr_jax.losses import triplet_loss_with_warmup
  s = np.array([[0.9, 0.8, 0.1], [0.0, 0.5, 0.45], [0.3, 0.45, 0.7]], np.float32)
  hp = {"margin": np.float32(0.3), "hardneg_warmup_epochs": np.float32(1.0)}
  warm, m = triplet_loss_with_warmup(s, dict(hp, epoch=np.float32(0.5)))
  hard, m2 = triplet_loss_with_warmup(s, dict(hp, epoch=np.float32(1.0)))
  assert float(warm) == pytest.approx(1.4, abs=1e-6) and float(m["hard_negatives"]) == 0.0
  assert float(hard) == pytest.approx(1.15, abs=1e-6) and float(m2["hard_negatives"]) == 1.0
  plain, m3 = triplet_loss_with_warmup(s, {"margin": np.float32(0.3)})
  assert float(plain) == pytest.approx(1.15, abs=1e-6) and m3 == {}
