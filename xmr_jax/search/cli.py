"""Command line: ``python -m xmr_jax.search index|query ...`` (docs/search.md).

  python -m xmr_jax.search index --workdir W --images DIR --out IDX \\
      [--captions FILE [--format auto|coco|flickr|karpathy|csv] | --caption-lines FILE] \\
      [--dtype float32|bfloat16]
  python -m xmr_jax.search query --index IDX "a man riding a wave" [--k 10] \\
      [--queries FILE] [--image PHOTO] [--json] [--html OUT.html] [--workdir W] \
      [--shortlist own|IDX2 [--rerank-k 128]]
  python -m xmr_jax.search export-faiss --index IDX --out FILE.faiss [--side images|captions]

Bad input (a missing or half-written index, an index another model made, an empty query, an
unreadable photo, ...) is one line on stderr, ``xmr_jax: error: ...``, and exit status 2.
"""
import argparse
import json
import sys
from typing import List, Optional, Sequence

from xmr_jax.common import io
from xmr_jax.common.errors import InputError
from xmr_jax.data import captions as captions_lib
from xmr_jax.search import build, model as model_lib, page, query as query_lib, store


RERANK_K = 128    # --rerank-k: rows scored exactly per query in two-stage search


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are InputErrors (one line, exit 2), not a usage banner."""

  def error(self, message):
    """Raises InputError(message) instead of printing usage and exiting."""
    raise InputError(f"{self.prog}: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m xmr_jax.search",
              description="Search a photo collection with a trained workdir (docs/search.md).")
  sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
  i = sub.add_parser("index", help="encode a photo folder (and captions) into an index")
  i.add_argument("--workdir", required=True, help="trained workdir (trained on photos)")
  i.add_argument("--images", required=True, help="folder of photos (searched recursively)")
  i.add_argument("--out", required=True, help="index folder: new, or one to append to")
  caps = i.add_mutually_exclusive_group()
  caps.add_argument("--captions", help="caption file of any format xmr_jax reads")
  caps.add_argument("--caption-lines", help="plain text file, one caption a line")
  i.add_argument("--format", default="auto", choices=["auto", *captions_lib.FORMATS],
                 help="format of --captions")
  i.add_argument("--dtype", choices=store.DTYPES, default=None,
                 help="stored float dtype (default float32; appending keeps the index's)")
  q = sub.add_parser("query", help="rank an index's photos for a text, or captions for a photo")
  q.add_argument("text", nargs="?", help="the query (quote it)")
  q.add_argument("--index", required=True, help="index folder made by `index`")
  q.add_argument("--queries", help="file of queries, one a line (blank lines skipped)")
  q.add_argument("--image", help="a photo: rank the index's captions instead")
  q.add_argument("--k", type=int, default=10, help="results per query (default 10)")
  q.add_argument("--json", action="store_true", help="one JSON object per result line")
  q.add_argument("--html", help="also write a self-contained HTML page of the results")
  q.add_argument("--workdir", help="the workdir, if it moved since the index was built")
  q.add_argument("--shortlist", help="two-stage search: 'own' (the method's dot-product global "
                 "term) or IDX2, an index of a VSE++ or PCME workdir over the same photos; the "
                 "method then scores only each query's --rerank-k best by it")
  q.add_argument("--rerank-k", type=int, default=None,
                 help=f"with --shortlist: how many to score exactly (default {RERANK_K})")
  f = sub.add_parser("export-faiss", help="write an index's embedding matrix as a FAISS index")
  f.add_argument("--index", required=True, help="index folder made by `index`")
  f.add_argument("--out", required=True, help="the FAISS index file to write")
  f.add_argument("--side", choices=["images", "captions"], default="images",
                 help="which rows (default images)")
  return p


def _export(a) -> int:
  from xmr_jax.search import faiss_export
  rows = faiss_export.export(a.index, a.out, a.side)
  print(json.dumps({"rows": rows, "out": a.out}))
  return 0


def _index(a) -> int:
  captions = None
  if a.captions or a.caption_lines:
    captions = build.read_captions(a.captions or a.caption_lines,
                                   a.format if a.captions else "lines")
  counts = build.build_index(a.workdir, a.images, a.out, captions, a.dtype)
  print(json.dumps(counts))
  return 0


def _query_texts(a) -> List[str]:
  """The text queries of the command line: the positional one and --queries' lines."""
  texts = [] if a.text is None else [a.text]
  if a.queries:
    try:
      with open(a.queries, encoding="utf-8-sig") as f:
        texts += [line for line in f.read().splitlines() if line.strip()]
    except OSError as e:
      raise InputError(f"--queries {a.queries}: cannot be read ({e.strerror})") from None
  return texts


def _check_rerank(a) -> None:
  """--shortlist / --rerank-k / --k consistency (before anything is opened)."""
  if a.rerank_k is not None and a.shortlist is None:
    raise InputError(f"--rerank-k {a.rerank_k} goes with --shortlist own|IDX2 (two-stage "
                     f"search); give --shortlist, or leave --rerank-k out")
  a.rerank_k = RERANK_K if a.rerank_k is None else a.rerank_k
  if a.shortlist is not None and a.rerank_k < 1:
    raise InputError(f"--rerank-k {a.rerank_k}: give how many to score exactly, at least 1")
  if a.shortlist is not None and a.k > a.rerank_k:
    raise InputError(f"--k {a.k} is more than --rerank-k {a.rerank_k}: two-stage search ranks "
                     f"only the shortlist; raise --rerank-k to at least {a.k}")


def _checked(a):
  """(index, text queries or None, photo or None, shortlist index or None), every check that
  needs no model done."""
  if a.k < 1:
    raise InputError(f"--k {a.k}: give the number of results, at least 1")
  _check_rerank(a)
  index = store.open_index(a.index)
  other = (None if a.shortlist is None else
           query_lib.open_shortlist(index, a.shortlist, photo=a.image is not None))
  if a.image is None:
    return index, query_lib.clean_queries(_query_texts(a)), None, other
  if a.text is not None or a.queries:
    raise InputError("--image ranks captions for a photo; give it without a text query")
  query_lib.check_captions(index)
  captions_lib.load_photo(a.image)      # unreadable: one message before the model loads
  return index, None, a.image, other


def _print(index: store.Index, results: Sequence[query_lib.Result], photo: bool,
           as_json: bool) -> None:
  for r in results:
    if not as_json:
      print(f"query: {r.query}\n{'rank':>4}  {'score':>9}  {'caption' if photo else 'file'}")
    for rank, (row, score) in enumerate(zip(r.rows, r.scores), 1):
      item = index.captions[row] if photo else index.files[row]
      of = index.caption_photos[row] if photo else ""
      if as_json:
        line = {"query": r.query, "rank": rank, "score": float(score)}
        line.update({"caption": item, "file": of or None} if photo else {"file": item})
        print(json.dumps(line, ensure_ascii=False))
      else:
        print(f"{rank:>4}  {score:>9.4f}  {item}" + (f"  ({of})" if of else ""))


def _shortlist(a, model, index, other) -> Optional[query_lib.Shortlist]:
  """The two-stage shortlist of ``--shortlist`` (None without), announced on stderr."""
  if a.shortlist is None:
    return None
  shortlist = query_lib.make_shortlist(model, index, other, a.shortlist, a.rerank_k)
  side = "captions" if a.image else "photos"
  n = len(index.captions if a.image else index.files)
  print(f"xmr_jax search: two-stage: the {min(a.rerank_k, n)} best {side} of {n} by "
        f"{a.shortlist} ({shortlist.model.method.name}), then {model.method.name}'s own score "
        f"on those alone", file=sys.stderr)
  return shortlist


def _query(a) -> int:
  index, texts, photo, other = _checked(a)
  model = model_lib.load(query_lib.model_workdir(index, a.workdir))
  shortlist = _shortlist(a, model, index, other)
  if photo is None:
    results = query_lib.search_texts(model, index, texts, a.k, shortlist)
  else:
    results = [query_lib.search_photo(model, index, photo, a.k, shortlist)]
  _print(index, results, photo is not None, a.json)
  if a.html:
    page.write_page(a.html, index, results, photo_query=photo is not None)
    print(f"xmr_jax search: wrote {a.html}", file=sys.stderr)
  return 0


def main(argv: Optional[List[str]] = None) -> int:
  """Runs one command; an InputError is one line on stderr and exit status 2 (any other
  exception is a bug and keeps its traceback)."""
  try:
    a = _parser().parse_args(argv)
    io.enable_compilation_cache()
    return {"index": _index, "query": _query, "export-faiss": _export}[a.command](a)
  except InputError as e:
    print(f"xmr_jax: error: {e}", file=sys.stderr, flush=True)
    return 2
