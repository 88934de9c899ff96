"""Search a photo collection with a trained workdir (docs/search.md).

``python -m xmr_jax.search index`` encodes a folder of photos (and optionally captions) with
a workdir's model into an index folder (``store``: memory-mappable .npy, file names, the
model's identity); ``python -m xmr_jax.search query`` ranks its photos for a caption, or its
captions for a photo. A method whose score is a dot product (``Method.embedding``) is searched
with a chunked matrix product and top-k (``topk``); any other is scored exactly, all pairs,
by the evaluation engine.

From Python::

  from xmr_jax.search import build, model, query, store
  build.build_index("W", "photos/", "IDX")
  index = store.open_index("IDX")
  m = model.load(query.model_workdir(index))
  best = query.search_texts(m, index, ["a man riding a wave"], k=5)[0]
  print([index.files[r] for r in best.rows], best.scores)
"""
