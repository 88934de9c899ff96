"""From caption rows (one caption each, as a reader finds them) to :class:`CaptionedImage` s.

Every format reader turns its file into :class:`Row` s and hands them to :func:`group_rows`,
so normalisation, empty captions and caption order are handled once for all formats.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

from xmr_jax.data.captions.form import EMPTY_CAPTION, CaptionedImage, Dropped, fault
from xmr_jax.data.precomp import normalize_caption


class Row(NamedTuple):
  """One caption as read: the photo it belongs to, its raw text, where it was, its order.

  ``order`` sorts the captions of one photo (Flickr's "#i"; otherwise the position in the
  file); ``split`` is the source's split ("train", "dev", "test") or None.
  """
  file: str
  text: str
  source: str
  order: int
  split: Optional[str] = None


def group_rows(rows: Sequence[Row], strict: bool,
               dropped: List[Dropped]) -> List[CaptionedImage]:
  """One :class:`CaptionedImage` per file, in order of the file's first row.

  Captions go through ``precomp.normalize_caption`` (NFC; byte-order mark, CR, zero-width and
  other invisible characters trimmed at both ends). Within a file, captions are sorted by
  ``Row.order`` (stable, so equal orders keep file order). A caption that is empty after
  normalisation is an EMPTY_CAPTION fault (appended to ``dropped``, or a DataError naming
  its line under ``strict``); a file left without captions is not returned (the caller
  reports it as NO_CAPTION if it must).
  """
  by_file: Dict[str, List[Row]] = {}
  for row in rows:
    by_file.setdefault(row.file, []).append(row)
  images = []
  for file, group in by_file.items():
    captions, sources = [], []
    for row in sorted(group, key=lambda r: r.order):
      text = normalize_caption(row.text)
      if not text:
        fault(strict, dropped, EMPTY_CAPTION, f"{row.source}: {file}",
              f"{row.source}: the caption of {file!r} is empty (no visible character after "
              "Unicode NFC and trimming); write the caption or remove the line")
        continue
      captions.append(text)
      sources.append(row.source)
    if captions:
      images.append(CaptionedImage(file, captions, sources, split=group[0].split))
  return images

