"""Command line: ``python -m xmr_jax.search index|query ...`` (docs/search.md).

  python -m xmr_jax.search index --workdir W --images DIR --out IDX \\
      [--captions FILE [--format auto|coco|flickr|karpathy|csv] | --caption-lines FILE] \\
      [--dtype float32|bfloat16]
  python -m xmr_jax.search query --index IDX "a man riding a wave" [--k 10] \\
      [--queries FILE] [--image PHOTO] [--json] [--html OUT.html] [--workdir W]

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
  return p


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


def _checked(a):
  """(index, text queries or None, photo or None), every check that needs no model done."""
  if a.k < 1:
    raise InputError(f"--k {a.k}: give the number of results, at least 1")
  index = store.open_index(a.index)
  if a.image is None:
    return index, query_lib.clean_queries(_query_texts(a)), None
  if a.text is not None or a.queries:
    raise InputError("--image ranks captions for a photo; give it without a text query")
  query_lib.check_captions(index)
  captions_lib.load_photo(a.image)      # unreadable: one message before the model loads
  return index, None, a.image


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


def _query(a) -> int:
  index, texts, photo = _checked(a)
  model = model_lib.load(query_lib.model_workdir(index, a.workdir))
  if photo is None:
    results = query_lib.search_texts(model, index, texts, a.k)
  else:
    results = [query_lib.search_photo(model, index, photo, a.k)]
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
    return _index(a) if a.command == "index" else _query(a)
  except InputError as e:
    print(f"xmr_jax: error: {e}", file=sys.stderr, flush=True)
    return 2
