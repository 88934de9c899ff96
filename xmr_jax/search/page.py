"""``search query --html``: one self-contained HTML page of the results.

Thumbnails are JPEGs made with PIL and embedded as base64 ``data:`` URIs, so the page needs
nothing beside it; a photo that is gone or unreadable gets a grey box with its name. The page
names the query, the method, the workdir and checkpoint step, and each result's file and score.
"""
import base64
import html
import io
import os
from typing import List, Optional, Sequence

from xmr_jax.common.io import atomic_write_bytes
from xmr_jax.data import captions as captions_lib
from xmr_jax.search import store
from xmr_jax.search.query import Result

THUMBNAIL = 192   # longest side in pixels
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
header p { margin: 0.2em 0; color: #555; }
h2 { margin-top: 1.5em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 200px; }
figure img, .missing { width: 192px; height: 192px; object-fit: contain; background: #eee; }
.missing { display: flex; align-items: center; justify-content: center; font-size: 0.8em; }
figcaption { font-size: 0.85em; word-break: break-all; }
.score { font-family: monospace; }
"""


def thumbnail_uri(path: str, side: int = THUMBNAIL) -> Optional[str]:
  """``data:image/jpeg;base64,...`` of the photo at ``path`` shrunk to ``side`` pixels (its
  longest side), or None when it cannot be read."""
  try:
    photo = captions_lib.load_photo(path)
  except captions_lib.DataError:
    return None
  photo.thumbnail((side, side))
  buffer = io.BytesIO()
  photo.save(buffer, "JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(path: str, label: str) -> str:
  uri = thumbnail_uri(path)
  name = html.escape(os.path.basename(path))
  image = (f'<img src="{uri}" alt="{name}">' if uri else
           f'<div class="missing">{name} (not readable)</div>')
  return f"<figure>{image}<figcaption>{label}</figcaption></figure>"


def _photos_section(index: store.Index, result: Result) -> str:
  figures = []
  for rank, (row, score) in enumerate(zip(result.rows, result.scores), 1):
    file = index.files[row]
    label = (f'{rank}. {html.escape(file)}<br><span class="score">{score:.4f}</span>')
    figures.append(_figure(os.path.join(index.identity["images_dir"], file), label))
  return (f"<section><h2>{html.escape(result.query)}</h2>"
          f'<div class="grid">{"".join(figures)}</div></section>')


def _captions_section(index: store.Index, result: Result) -> str:
  items = []
  for row, score in zip(result.rows, result.scores):
    photo = index.caption_photos[row]
    of = f" <small>({html.escape(photo)})</small>" if photo else ""
    items.append(f'<li><span class="score">{score:.4f}</span> '
                 f'{html.escape(index.captions[row])}{of}</li>')
  query = _figure(result.query, html.escape(result.query))
  return (f"<section><h2>captions for {html.escape(os.path.basename(result.query))}</h2>"
          f'{query}<ol>{"".join(items)}</ol></section>')


def render(index: store.Index, results: Sequence[Result], photo_query: bool) -> str:
  """The page's HTML: a header (method, workdir, step, index), then one section per query:
  ranked photo thumbnails (text queries) or the query photo and ranked captions."""
  ident = index.identity
  section = _captions_section if photo_query else _photos_section
  header = (f"<header><h1>xmr_jax search</h1>"
            f"<p>method: <b>{html.escape(str(ident['method']))}</b>, checkpoint step "
            f"{ident['checkpoint_step']}</p>"
            f"<p>workdir: {html.escape(ident['workdir'])}</p>"
            f"<p>index: {html.escape(os.path.abspath(index.path))} "
            f"({ident['images']['count']} photos)</p></header>")
  body: List[str] = [section(index, r) for r in results]
  return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>xmr_jax search: "
          f"{html.escape(results[0].query if results else '')}</title>"
          f"<style>{_STYLE}</style></head><body>{header}{''.join(body)}</body></html>\n")


def write_page(path: str, index: store.Index, results: Sequence[Result],
               photo_query: bool = False) -> None:
  """Writes :func:`render` to ``path`` (UTF-8, atomically)."""
  atomic_write_bytes(path, render(index, results, photo_query).encode("utf-8"))
