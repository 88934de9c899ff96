"""The neutral layer: what every room (data, models, training, evaluation) may use.

``mesh``: the data mesh, sharding and multi-process helpers; ``io``: atomic file writes and
the cache directory. Nothing here imports another ``xmr_jax`` package, so every room can
depend on it without creating an arrow between rooms (docs/architecture.md).
"""
