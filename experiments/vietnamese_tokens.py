"""What the text towers' tokenizers do to Vietnamese: MiniLM's WordPiece (``wordpiece``) and
multilingual-e5-small's XLM-R unigram (``e5_small``) on a caption file; writes JSON.

  python experiments/vietnamese_tokens.py \
      --captions=../shared/real/uitviic/captions.txt --out=/tmp/vietnamese_tokens.json

Captions: every line of ``--captions`` (``name.jpg, caption``: uitviic's format), through
``normalize_caption`` as training sees them. A syllable is a whitespace-separated token of a
caption (the captions are already tokenised: punctuation stands alone), lower-cased when
counted as distinct. Per tokenizer: how many distinct forms the distinct syllables become
(WordPiece: its normaliser's output, lower-cased and stripped of accents; e5_small: its piece
sequence, which keeps case and marks), the share of distinct syllables, and of syllables in
the text, that share their form with another syllable, whether every syllable's pieces spell
it back (marks kept), pieces per syllable over the text (each syllable as written, alone),
the share of pieces that are the unknown id, and ids per caption (start/end tokens and, for
e5_small, the ``query:`` prefix included) with the tokenizing time of the whole file.
"""
import collections
import json
import time

from absl import app, flags

from xmr_jax.data.precomp import normalize_caption
from xmr_jax.data.tokenizers import E5Tokenizer, WordPieceTokenizer

FLAGS = flags.FLAGS
flags.DEFINE_string("captions", "../shared/real/uitviic/captions.txt", "name.jpg, caption lines")
flags.DEFINE_string("out", "vietnamese_tokens.json", "Where to write the JSON.")


def read_captions(path):
  """The caption of every ``name.jpg, caption`` line, normalised as training reads it."""
  with open(path, encoding="utf-8") as f:
    return [normalize_caption(line.split(", ", 1)[1]) for line in f if ", " in line]


def collisions(forms):
  """{syllable: form} -> (distinct forms, syllables whose form another syllable shares)."""
  by_form = collections.defaultdict(set)
  for syllable, form in forms.items():
    by_form[form].add(syllable)
  return len(by_form), {s for group in by_form.values() if len(group) > 1 for s in group}


def measure(name, captions, syllable_ids, form, spell, unk_id, encode_captions):
  """The numbers of the module doc for one tokenizer (``syllable_ids``: text -> its piece ids
  alone; ``form``: lower-cased syllable -> what the model can tell apart; ``spell``: piece ids
  -> text)."""
  written = collections.Counter(w for c in captions for w in c.split())
  lower = collections.Counter()
  for w, n in written.items():
    lower[w.lower()] += n
  n_forms, shared = collisions({w: form(w) for w in lower})
  pieces = {w: syllable_ids(w) for w in written}
  total = sum(written.values())
  n_pieces = sum(len(pieces[w]) * n for w, n in written.items())
  start = time.perf_counter()
  ids = encode_captions(captions)
  seconds = time.perf_counter() - start
  lengths = [len(x) for x in ids]
  return {"tokenizer": name, "captions": len(captions), "syllables_in_text": total,
          "distinct_syllables_lower": len(lower), "distinct_syllables_as_written": len(written),
          "distinct_forms": n_forms, "distinct_syllables_sharing_a_form": len(shared) / len(lower),
          "text_syllables_sharing_a_form": sum(lower[w] for w in shared) / total,
          "syllables_spelled_back": sum(spell(pieces[w]) == w for w in written) / len(written),
          "pieces_per_syllable": n_pieces / total,
          "unknown_share_of_pieces": sum(p.count(unk_id) * written[w]
                                         for w, p in pieces.items()) / n_pieces,
          "ids_per_caption_mean": sum(lengths) / len(lengths), "ids_per_caption_max": max(lengths),
          "tokenize_all_seconds": seconds}


def main(argv):
  del argv
  captions = read_captions(FLAGS.captions)
  wp = WordPieceTokenizer.from_package()
  e5 = E5Tokenizer.from_package()
  hf = e5.tokenizer.tokenizer          # the unigram model, without the "query: " prefix
  e5_pieces = lambda w: hf.encode(w.translate(e5.tokenizer.table),
                                  add_special_tokens=False).ids
  out = [
      measure("wordpiece (minilm)", captions,
              lambda w: wp.tokenizer.encode(w, add_special_tokens=False).ids,
              wp.tokenizer.normalizer.normalize_str, lambda ids: wp.decode(ids),
              wp.UNK_ID, wp.encode_many),
      measure("e5_small", captions, e5_pieces, lambda w: tuple(e5_pieces(w)),
              lambda ids: hf.decode(ids), e5.UNK_ID, e5.encode_many),
  ]
  with open(FLAGS.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
