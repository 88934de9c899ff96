"""Pretrained image backbones in Flax, loaded without PyTorch (``efficientnet_lite``), chosen by
name in a declared table (``registry``: efficientnet_lite0/1/2) with their input policies
(``preprocessing``), and the safe reader for the legacy ``torch.save`` files their weights
ship in (``torch_pickle``).

A room of its own: imports ``xmr_jax.common`` and ``xmr_jax.types`` only, so the data room
can turn photos into region features with it.
"""
