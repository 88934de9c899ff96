"""Line-based caption files: the Flickr8k/Flickr30k token file and "name.jpg, caption" CSV/TSV.

Both are UTF-8 (a byte-order mark before line 1 and CRLF line ends are accepted); blank
lines are skipped. A line that does not have the layout is a DataError naming the file,
the line and the layout expected: such a file was most likely read as the wrong format.
"""
import re
from typing import List, Optional, Tuple

from xmr_jax.data.captions.form import CaptionSet
from xmr_jax.data.captions.photos import PHOTO_SUFFIXES, is_photo_name
from xmr_jax.data.captions.rows import Row, group_rows
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import strip_invisible

# "1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ..." (Flickr8k.token.txt,
# Flickr30k results_20130124.token). Group 1: file, 2: caption index, 3: caption.
FLICKR_LINE = re.compile(r"^(\S+)#(\d+)\t(.*)$")
FLICKR_LAYOUT = ("one caption a line, `name.jpg#i<TAB>caption` (the Flickr8k/Flickr30k "
                 "token file: file name, '#', caption index, a tab, the caption)")
CSV_LAYOUT = ("one caption a line, `name.jpg, caption` (a photo file name ending in "
              f"{'/'.join(PHOTO_SUFFIXES)}, a comma or a tab, then the caption; a caption "
              "holding commas may be a double-quoted CSV field)")
_SEPARATOR = re.compile(r"[,\t]")


def read_text_lines(path: str) -> List[Tuple[int, str]]:
  """(1-based line number, line) for every line of ``path`` with a visible character.

  The line keeps its text as written except a trailing CR and, on line 1, a byte-order mark.

  Raises:
    DataError: the file is missing or not UTF-8 (naming the line and byte).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise DataError(f"{path}: caption file not found; check the path") from e
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start} of the "
                    "file); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from e
  if text.startswith("\ufeff"):   # written by Notepad and by pandas' utf-8-sig
    text = text[1:]
  out = []
  for number, line in enumerate(text.split("\n"), start=1):
    line = line[:-1] if line.endswith("\r") else line
    if strip_invisible(line):
      out.append((number, line))
  return out


def flickr_rows(path: str) -> List[Row]:
  """The rows of a Flickr token file; a caption's order is its "#i" index.

  Raises:
    DataError: a line without the token layout (naming the line and FLICKR_LAYOUT), or no
      line at all.
  """
  rows = []
  for number, line in read_text_lines(path):
    match = FLICKR_LINE.match(line)
    if match is None:
      raise DataError(f"{path}:{number}: {line[:80]!r} is not a Flickr token line; expected "
                      f"{FLICKR_LAYOUT}")
    rows.append(Row(match[1], match[3], f"{path}:{number}", int(match[2])))
  if not rows:
    raise DataError(f"{path}: no caption line; expected {FLICKR_LAYOUT}")
  return rows


def read_flickr(path: str, strict: bool = False) -> CaptionSet:
  """Reads a Flickr8k/Flickr30k token file (``name.jpg#i<TAB>caption`` lines).

  An image's captions are sorted by their index ``i`` (stable: lines with the same index
  keep file order), so a file whose lines are out of order still gives caption 0 first.
  Images come in the order of their first line. Empty captions are dropped (DataError under
  ``strict``). Follows the layout of Flickr8k.token.txt and Flickr30k's results_20130124.token.

  Raises:
    DataError: missing file, not UTF-8, or a line without the layout.
  """
  dropped: list = []
  images = group_rows(flickr_rows(path), strict, dropped)
  return CaptionSet(images, "flickr", path, dropped=dropped)


def unquote(field: str) -> str:
  """A double-quoted CSV field's text (``"a, b"`` -> ``a, b``, ``""`` inside -> ``"``).

  A field that does not both start and end with a double quote is returned unchanged.
  """
  if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
    return field[1:-1].replace('""', '"')
  return field


def parse_csv_line(line: str) -> Optional[Tuple[str, str]]:
  """(file name, caption) of one ``name.jpg, caption`` line, or None without a separator.

  The name is everything before the first comma or tab, the caption the rest of the line,
  both stripped and unquoted (:func:`unquote`). Commas later in the line stay in the
  caption, quoted or not: captions with unquoted commas are common in real files.
  """
  match = _SEPARATOR.search(line)
  if match is None:
    return None
  return unquote(line[:match.start()].strip()), unquote(line[match.end():].strip())


def csv_rows(path: str) -> Tuple[List[Row], Optional[str]]:
  """The rows of a ``name.jpg, caption`` file, and its header line (or None).

  Line 1 is a header (e.g. "image,caption", as in Kaggle's Flickr8k captions.txt) when its
  first field is not a photo file name; it is skipped and returned.

  Raises:
    DataError: a line (other than a header) without a separator or whose first field is not
      a photo file name (naming the line and CSV_LAYOUT), or no caption line at all.
  """
  rows, header = [], None
  for index, (number, line) in enumerate(read_text_lines(path)):
    parsed = parse_csv_line(line)
    if parsed is None or not is_photo_name(parsed[0]):
      if index == 0 and parsed is not None:   # a header names columns, not photos
        header = line
        continue
      what = ("has no comma or tab" if parsed is None else
              f"starts with {parsed[0][:60]!r}, which is not a photo file name")
      raise DataError(f"{path}:{number}: the line {what}; expected {CSV_LAYOUT}")
    rows.append(Row(parsed[0], parsed[1], f"{path}:{number}", index))
  if not rows:
    raise DataError(f"{path}: no caption line{' after the header' if header else ''}; expected "
                    f"{CSV_LAYOUT}")
  return rows, header


def read_csv(path: str, strict: bool = False) -> CaptionSet:
  """Reads a ``name.jpg, caption`` CSV/TSV file (see :func:`csv_rows`, :func:`parse_csv_line`).

  Captions of one image keep file order; images come in the order of their first line.
  Empty captions are dropped (DataError under ``strict``). This is the layout of
  UIT-ViIC-style captions.txt files and (with a header) Kaggle's Flickr8k captions.txt.

  Raises:
    DataError: missing file, not UTF-8, or a line without the layout.
  """
  dropped: list = []
  rows, _ = csv_rows(path)
  return CaptionSet(group_rows(rows, strict, dropped), "csv", path, dropped=dropped)
