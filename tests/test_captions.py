"""Caption dataset readers (xmr_jax/data/captions/): formats, auto-detection, k, splits, faults.

Every file is hand-written here (tmp_path); the real sets are in test_captions_real.py.
"""
import json
import os
import unicodedata

import numpy as np
import pytest
from PIL import Image

from xmr_jax.common.errors import ConfigError, InputError
from xmr_jax.data import captions as C
from xmr_jax.data.errors import DataError


def _write(path, text):
  path.write_bytes(text.encode("utf-8"))
  return str(path)


def _json(path, obj):
  return _write(path, json.dumps(obj))


def _photo(path, size=(8, 6), color=(10, 20, 30)):
  Image.new("RGB", size, color).save(path, "JPEG" if str(path).endswith(".jpg") else None)
  return str(path)


COCO = {
    "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"},
               {"id": 9, "file_name": "lonely.jpg"}],
    "annotations": [
        {"image_id": 3, "caption": "b one"},
        {"image_id": 7, "caption": "\ufeffa one \u200b"},            # BOM, zero-width space
        {"image_id": 7, "caption": unicodedata.normalize("NFD", "Một a two")},
        {"image_id": 42, "caption": "names no image"},
        {"image_id": 3, "caption": " \u200b\t"},                       # empty once trimmed
        {"image_id": 3, "caption": "b two"},
    ],
}


def test_coco_reader_order_normalisation_and_faults(tmp_path):
  s = C.read_coco(_json(tmp_path / "captions.json", COCO))
  assert s.format == "coco" and s.class_names is None
  assert [im.file for im in s.images] == ["b.jpg", "a.jpg"]     # order of first caption
  b, a = s.images
  assert a.captions == ["a one", "Một a two"] and b.captions == ["b one", "b two"]
  assert unicodedata.is_normalized("NFC", a.captions[1])
  assert b.sources[1].endswith("captions.json: annotations[5]")
  assert a.boxes is None and a.split is None
  assert C.count_dropped(s.dropped) == {C.MISSING_IMAGE: 1, C.NO_CAPTION: 1,
                                        C.EMPTY_CAPTION: 1}
  assert C.Dropped("lonely.jpg", C.NO_CAPTION) in s.dropped
  assert any("image_id 42" in d.item for d in s.dropped)


def test_coco_with_its_folder_lists_an_uncaptioned_photo_once(tmp_path):
  (tmp_path / "images").mkdir()
  for name in ("a.jpg", "b.jpg", "lonely.jpg"):
    _photo(tmp_path / "images" / name)
  s = C.read_caption_set(_json(tmp_path / "captions.json", COCO), str(tmp_path / "images"),
                         verbose=False)
  assert [d for d in s.dropped if d.reason == C.NO_CAPTION] == [
      C.Dropped("lonely.jpg", C.NO_CAPTION)]
  assert [im.file for im in s.images] == ["b.jpg", "a.jpg"]


@pytest.mark.parametrize("broken, match", [
    ({"annotations": [{"image_id": 7, "caption": "x"}, {"image_id": 42, "caption": "x"}]},
     r"annotations\[1\]: image_id 42 is not an id in images\[\]"),
    ({"annotations": [{"image_id": 3, "caption": "  "}]}, r"annotations\[0\]: the caption "
                                                          r"of 'b.jpg' is empty"),
    ({"annotations": [{"image_id": 7, "caption": "x"}]}, r"lists 'b.jpg' but no annotation"),
])
def test_coco_faults_are_errors_when_strict(tmp_path, broken, match):
  doc = {"images": COCO["images"][:2], **broken}
  with pytest.raises(DataError, match=match):
    C.read_coco(_json(tmp_path / "c.json", doc), strict=True)


def test_coco_repeated_annotation_id_is_a_fault_not_a_caption(tmp_path):
  """A repeated entry (same annotations[].id) would push one of the image's real captions
  past k: it is dropped and listed, or an error under strict."""
  notes = [{"id": 100 + j, "image_id": 7, "caption": f"a caption {j}"} for j in range(5)]
  doc = {"images": [{"id": 7, "file_name": "a.jpg"}],
         "annotations": [notes[0], dict(notes[0]), *notes[1:]]}
  s = C.keep_k(C.read_coco(_json(tmp_path / "c.json", doc)), 5)
  assert s.images[0].captions == [f"a caption {j}" for j in range(5)]
  assert [d.reason for d in s.dropped] == [C.REPEATED_ID]
  assert s.dropped[0].item == "annotations[1] (id 100, first at annotations[0])"
  with pytest.raises(DataError, match=r"annotations\[1\]: id 100 was already given to "
                                      r"annotations\[0\]"):
    C.read_coco(_json(tmp_path / "c.json", doc), strict=True)


def test_coco_without_its_layout_names_the_entry(tmp_path):
  bad = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}
  with pytest.raises(DataError, match=r"c.json: annotations\[0\] has no caption .*COCO "
                                      "captions json"):
    C.read_coco(_json(tmp_path / "c.json", bad))
  twice = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
           "annotations": []}
  with pytest.raises(DataError, match=r"images\[1\]: id 1 is used twice"):
    C.read_coco(_json(tmp_path / "c.json", twice))
  (tmp_path / "broken.json").write_text('{"images": [\n  {"id": 1,,}]}')
  with pytest.raises(DataError, match=r"broken.json:2: not valid JSON"):
    C.read_coco(str(tmp_path / "broken.json"))


INSTANCES = {
    "images": [{"id": 70, "file_name": "a.jpg"}, {"id": 30, "file_name": "b.jpg"}],
    "categories": [{"id": 5, "name": "dog"}, {"id": 1, "name": "person"},
                   {"id": 90, "name": "toothbrush"}],
    "annotations": [
        {"image_id": 70, "category_id": 90, "bbox": [10, 20, 30, 40]},
        {"image_id": 70, "category_id": 5, "bbox": [0.5, 1.5, 2.0, 0]},
        {"image_id": 70, "category_id": 90, "bbox": [1, 1, 1, 1]},
    ],
}


def test_coco_instances_give_boxes_classes_and_multi_hot(tmp_path):
  # Instances match captions by file name, not id: here the ids differ on purpose.
  s = C.read_coco(_json(tmp_path / "captions.json", COCO),
                  instances=_json(tmp_path / "instances.json", INSTANCES))
  assert s.class_names == ["dog", "person", "toothbrush"]
  b, a = s.images
  np.testing.assert_allclose(a.boxes, [[10, 20, 40, 60], [0.5, 1.5, 2.5, 1.5], [1, 1, 2, 2]])
  assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int32
  assert a.classes.tolist() == [2, 0, 2]     # index in categories[], not the COCO id
  assert b.boxes.shape == (0, 4) and b.classes.shape == (0,)
  hot = C.multi_hot(s)
  assert hot.dtype == np.uint8 and hot.tolist() == [[0, 0, 0], [1, 0, 1]]


def test_instances_errors(tmp_path):
  caps = _json(tmp_path / "captions.json", COCO)
  other = dict(INSTANCES, images=[{"id": 70, "file_name": "zzz.jpg"}])
  with pytest.raises(DataError, match=r"none of its 1 annotated photos is in .*captions.json"):
    C.read_coco(caps, instances=_json(tmp_path / "i.json", other))
  bad_box = dict(INSTANCES, annotations=[{"image_id": 70, "category_id": 5,
                                          "bbox": [0, 0, -1, 2]}])
  with pytest.raises(DataError, match=r"annotations\[0\]: bbox \[0, 0, -1, 2\] is not"):
    C.read_coco(caps, instances=_json(tmp_path / "i.json", bad_box))
  bad_cat = dict(INSTANCES, annotations=[{"image_id": 70, "category_id": 2, "bbox": [0] * 4}])
  with pytest.raises(DataError, match=r"category_id 2 is not listed in categories"):
    C.read_coco(caps, instances=_json(tmp_path / "i.json", bad_cat))
  with pytest.raises(DataError, match=r"no instance classes; pass instances="):
    C.multi_hot(C.read_coco(caps))


def test_flickr_sorts_by_index_stably(tmp_path):
  path = _write(tmp_path / "Flickr8k.token.txt",
                "\ufeffb.jpg#1\tb second\r\n"
                "a.jpg#0\ta zero\r\n"
                "b.jpg#0\tb first\r\n"
                "\n"
                "b.jpg#1\tb second again\r\n"
                "a.jpg#2\t\u200b\r\n")
  s = C.read_flickr(path)
  assert s.format == "flickr" and [im.file for im in s.images] == ["b.jpg", "a.jpg"]
  assert s.images[0].captions == ["b first", "b second", "b second again"]
  assert s.images[0].sources == [f"{path}:3", f"{path}:1", f"{path}:5"]
  assert s.images[1].captions == ["a zero"]
  assert s.dropped == [C.Dropped(f"{path}:6: a.jpg", C.EMPTY_CAPTION)]
  with pytest.raises(DataError, match=r"Flickr8k.token.txt:6: the caption of 'a.jpg' is empty"):
    C.read_flickr(path, strict=True)


def test_flickr_line_without_layout_names_line_and_layout(tmp_path):
  path = _write(tmp_path / "f.token", "a.jpg#0\tok\na.jpg#1 spaces not a tab\n")
  with pytest.raises(DataError, match=r"f.token:2: 'a.jpg#1 spaces not a tab' is not a "
                                      r"Flickr token line; expected .*name.jpg#i<TAB>caption"):
    C.read_flickr(path)


def test_karpathy_splits_filepath_and_errors(tmp_path):
  doc = {"dataset": "coco", "images": [
      {"filepath": "val2014", "filename": "v1.jpg", "split": "val",
       "sentences": [{"raw": "first ", "tokens": ["x"]}, {"raw": "second"}]},
      {"filepath": "train2014", "filename": "t1.jpg", "split": "restval",
       "sentences": [{"raw": "r"}]},
      {"filename": "f.jpg", "split": "test", "sentences": [{"raw": "t"}]},
      {"filename": "g.jpg", "split": "train", "sentences": [{"raw": "g"}]},
      {"filename": "none.jpg", "split": "train", "sentences": []}]}
  s = C.read_karpathy(_json(tmp_path / "dataset_coco.json", doc))
  assert [(im.file, im.split) for im in s.images] == [
      ("val2014/v1.jpg", "dev"), ("train2014/t1.jpg", "train"), ("f.jpg", "test"),
      ("g.jpg", "train")]
  assert s.images[0].captions == ["first", "second"]
  assert s.dropped == [C.Dropped("none.jpg", C.NO_CAPTION)]
  assert C.split_counts(s) == {"dev": 1, "train": 2, "test": 1}
  doc["images"][3]["split"] = "validation"
  with pytest.raises(DataError, match=r"images\[3\]: split 'validation' is not one of"):
    C.read_karpathy(_json(tmp_path / "k.json", doc))
  doc["images"][3].update(split="train", sentences=[{"text": "no raw"}])
  with pytest.raises(DataError, match=r"images\[3\].sentences\[0\] has no raw"):
    C.read_karpathy(_json(tmp_path / "k.json", doc))


def test_csv_names_quotes_commas_tabs_and_header(tmp_path):
  path = _write(tmp_path / "captions.txt",
                "\ufeffimage,caption\r\n"
                "0001.jpg, a man, a dog , and a ball .\r\n"
                '0001.jpg, "a cat, on a mat" \r\n'
                '0002.jpg,"she said ""hi"", twice"\r\n'
                "0002.jpg\ttab separated, with comma\r\n"
                '"0003.jpg", "unclosed quote stays\r\n')
  s = C.read_csv(path)
  assert s.format == "csv"
  assert {im.file: im.captions for im in s.images} == {
      "0001.jpg": ["a man, a dog , and a ball .", "a cat, on a mat"],
      "0002.jpg": ['she said "hi", twice', "tab separated, with comma"],
      "0003.jpg": ['"unclosed quote stays']}
  assert s.images[0].sources == [f"{path}:2", f"{path}:3"]
  assert C.parse_csv_line('x.jpg,""') == ("x.jpg", "")
  assert C.unquote('"a ""b"""') == 'a "b"'


@pytest.mark.parametrize("text, match", [
    ("a.jpg, fine\nno separator here\n", r"captions.txt:2: the line has no comma or tab"),
    ("a.jpg, fine\nA man riding, a horse\n", r"captions.txt:2: the line starts with 'A man "
                                             r"riding', which is not a photo file name"),
    ("a.jpg, fine\n\xe9\n", None),
])
def test_csv_line_without_layout_is_an_error(tmp_path, text, match):
  path = tmp_path / "captions.txt"
  if match is None:   # latin-1 bytes: not UTF-8, named by line
    path.write_bytes(text.encode("latin-1"))
    match = r"captions.txt:2: not valid UTF-8"
  else:
    path.write_text(text)
  with pytest.raises(DataError, match=match) as info:
    C.read_csv(str(path))
  assert "UTF-8" in str(info.value) or "name.jpg, caption" in str(info.value)


def test_auto_detection_says_what_it_chose(tmp_path, capsys):
  files = {
      "coco": _json(tmp_path / "captions.json", COCO),
      "karpathy": _json(tmp_path / "dataset_flickr30k.json", {"images": [
          {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}),
      "flickr": _write(tmp_path / "results.token", "a.jpg#0\tx\n"),
      "csv": _write(tmp_path / "captions.txt", "a.jpg, x\n"),
  }
  for fmt, path in files.items():
    assert C.detect_format(path) == fmt
    s = C.read_caption_set(path)
    assert s.format == fmt
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"xmr_jax captions: {path}: reading as {fmt} (")
    assert err[-1].startswith(f"xmr_jax captions: {path} ({fmt}): kept ")
  no_name = _json(tmp_path / "doc", {"images": [{"filename": "a.jpg", "split": "test",
                                                 "sentences": [{"raw": "x"}]}]})
  assert C.detect_format(no_name) == "karpathy"    # a leading "{" means json
  other = _json(tmp_path / "other.json", {"images": [{"id": 1}], "info": {}})
  with pytest.raises(DataError, match=r"other.json: a json file with neither annotations\[\] "
                                      r"nor images\[\].sentences \(its keys: \['images', "
                                      r"'info'\]\)"):
    C.read_caption_set(other)


def test_a_forced_format_that_does_not_fit_is_one_error(tmp_path, capsys):
  coco = _json(tmp_path / "captions.json", COCO)
  with pytest.raises(DataError, match=r"captions.json: no caption line after the header; "
                                      r"expected one caption a line, `name.jpg, caption`"):
    C.read_caption_set(coco, format="csv")
  with pytest.raises(DataError, match=r"empty.txt: no caption line; expected .*name.jpg#i"):
    C.read_caption_set(_write(tmp_path / "empty.txt", "\n \n"), format="flickr")
  with pytest.raises(DataError, match=r"c.json: annotations\[\] is empty"):
    C.read_coco(_json(tmp_path / "c.json", {"images": [], "annotations": []}))
  with pytest.raises(DataError, match=r"k.json: images\[\] is empty"):
    C.read_karpathy(_json(tmp_path / "k.json", {"images": []}))
  path = _write(tmp_path / "captions.txt", "a.jpg, x\n")
  with pytest.raises(DataError, match=r"captions.txt:1: 'a.jpg, x' is not a Flickr token"):
    C.read_caption_set(path, format="flickr")
  with pytest.raises(DataError, match=r"captions.txt:1: not valid JSON"):
    C.read_caption_set(path, format="coco")
  with pytest.raises(ConfigError, match=r"format='tsv'; choose 'auto' or one of"):
    C.read_caption_set(path, format="tsv")
  with pytest.raises(ConfigError, match=r"captions_per_image=0"):
    C.read_caption_set(path, captions_per_image=0)
  with pytest.raises(DataError, match=r"nothere.txt: caption file not found"):
    C.read_caption_set(str(tmp_path / "nothere.txt"))


def _caps(counts):
  lines = [f"{name}, {name} caption {i}" for name, n in counts.items() for i in range(n)]
  return "\n".join(lines) + "\n"


def test_keep_k_trims_and_drops(tmp_path):
  path = _write(tmp_path / "c.txt", _caps({"a.jpg": 3, "b.jpg": 2, "c.jpg": 5}))
  s = C.keep_k(C.read_csv(path), 3)
  assert [(im.file, len(im.captions)) for im in s.images] == [("a.jpg", 3), ("c.jpg", 3)]
  assert s.images[1].captions == [f"c.jpg caption {i}" for i in range(3)]   # first k
  assert s.images[1].sources == [f"{path}:{n}" for n in (6, 7, 8)]
  assert C.count_dropped(s.dropped) == {C.TOO_FEW: 1, C.BEYOND_K: 2}
  assert s.dropped[0] == C.Dropped(f"b.jpg (2 captions; {path}:4,5)", C.TOO_FEW)
  with pytest.raises(DataError, match=r"c.txt:4,5: image 'b.jpg' has 2 captions, fewer than "
                                      r"captions_per_image=3"):
    C.keep_k(C.read_csv(path), 3, strict=True)
  for bad in (0, -1, 2.5, True, "5"):
    with pytest.raises(ConfigError, match="captions_per_image"):
      C.keep_k(C.read_csv(path), bad)


def test_split_images_is_seeded_by_sorted_name(tmp_path):
  names = [f"{i:03d}.jpg" for i in range(20)]
  forward = C.read_csv(_write(tmp_path / "f.txt", _caps({n: 1 for n in names})))
  backward = C.read_csv(_write(tmp_path / "b.txt", _caps({n: 1 for n in names[::-1]})))
  split_f = {im.file: im.split for im in C.split_images(forward, 3, 4, seed=7).images}
  split_b = {im.file: im.split for im in C.split_images(backward, 3, 4, seed=7).images}
  assert split_f == split_b                       # line order does not matter
  order = np.random.default_rng(7).permutation(20)   # the documented rule
  assert {names[i] for i in order[:3]} == {n for n, s in split_f.items() if s == "dev"}
  assert {names[i] for i in order[3:7]} == {n for n, s in split_f.items() if s == "test"}
  assert sum(s == "train" for s in split_f.values()) == 13
  other = {im.file: im.split for im in C.split_images(forward, 3, 4, seed=8).images}
  assert other != split_f
  assert forward.images[0].split is None          # the argument is unchanged
  with pytest.raises(ConfigError, match=r"n_dev=10 \+ n_test=11 images requested but .*f.txt "
                                        r"has 20 usable images; .*--config.data.split_sizes"):
    C.split_images(forward, 10, 11, seed=0)
  with pytest.raises(ConfigError, match=r"n_test=-1"):
    C.split_images(forward, 1, -1, seed=0)
  with pytest.raises(ConfigError, match=r"gives its own splits"):
    C.split_images(C.split_images(forward, 1, 1, seed=0), 1, 1, seed=0)


def _folder_set(tmp_path):
  """A folder with each kind of fault, and its caption file."""
  images = tmp_path / "images"
  (images / "sub").mkdir(parents=True)
  for name in ("ok.jpg", "sub/deep.jpg", "uncaptioned.jpg", "007.jpg", "few.jpg"):
    _photo(images / name)
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(images / "cut.jpg")   # noise: most bytes are pixel data
  data = (images / "cut.jpg").read_bytes()
  (images / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])   # a download cut short
  (images / "notes.txt").write_text("not a photo")
  (images / ".hidden.jpg").write_text("ignored")
  caps = _write(tmp_path / "captions.txt", _caps({
      "ok.jpg": 2, "sub/deep.jpg": 2, "0007.jpg": 2, "cut.jpg": 2, "few.jpg": 1}))
  return caps, str(images)


def test_folder_faults_are_dropped_and_listed(tmp_path, capsys):
  caps, images = _folder_set(tmp_path)
  s = C.read_caption_set(caps, images, captions_per_image=2)
  assert [im.file for im in s.images] == ["ok.jpg", "sub/deep.jpg"]
  assert C.count_dropped(s.dropped) == {C.MISSING_IMAGE: 1, C.NO_CAPTION: 2, C.TOO_FEW: 1,
                                        C.UNREADABLE: 1}
  items = {d.reason: d.item for d in s.dropped}
  assert items[C.MISSING_IMAGE] == f"0007.jpg (2 captions; {caps}:5,6; similar name: '007.jpg')"
  assert items[C.UNREADABLE].startswith("cut.jpg (truncated JPEG (no end-of-image marker)")
  assert C.Dropped("007.jpg (a caption names: '0007.jpg')", C.NO_CAPTION) in s.dropped
  assert C.Dropped("uncaptioned.jpg", C.NO_CAPTION) in s.dropped
  line = capsys.readouterr().err.splitlines()[-1]
  assert line == (f"xmr_jax captions: {caps} (csv): kept 2 images, 4 captions; dropped: "
                  "missing image: 1, no caption: 2, too few captions: 1, unreadable image: 1; "
                  "each item is in CaptionSet.dropped (write_dropped saves them as "
                  "dropped.txt)")
  # check_images=False trusts the files: the truncated photo is kept.
  unchecked = C.read_caption_set(caps, images, captions_per_image=2, check_images=False,
                                 verbose=False)
  assert "cut.jpg" in [im.file for im in unchecked.images]
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fix, match", [
    (None, r"captions.txt:5,6: names photo '0007.jpg', which is not in .*images; similar "
           r"name: '007.jpg'; fix the name"),
    ("0007.jpg", r"images/cut.jpg: truncated JPEG .*\(.*captions.txt:5,6\)"),
    ("cut.jpg", r"images/007.jpg: photo without any caption in .*captions.txt; add its "
                r"captions"),
])
def test_folder_faults_are_errors_when_strict(tmp_path, fix, match):
  caps, images = _folder_set(tmp_path)
  if fix:   # remove the earlier faults so the next kind is the first one found
    lines = open(caps).read().splitlines()
    drop = {"0007.jpg": ("0007.jpg",), "cut.jpg": ("0007.jpg", "cut.jpg")}[fix]
    _write(tmp_path / "captions.txt",
           "\n".join(l for l in lines if not l.startswith(drop)) + "\n")
  with pytest.raises(DataError, match=match) as info:
    C.read_caption_set(caps, images, captions_per_image=2, strict=True, verbose=False)
  assert "without strict=True such items are dropped" in str(info.value)
  assert isinstance(info.value, InputError)


def test_whole_file_mismatches_are_one_error(tmp_path):
  caps = _write(tmp_path / "c.txt", "a.jpg, x\nb.jpg, y\n")
  with pytest.raises(DataError, match=r"nope: images folder not found"):
    C.read_caption_set(caps, str(tmp_path / "nope"), verbose=False)
  (tmp_path / "other").mkdir()
  _photo(tmp_path / "other" / "z.jpg")
  with pytest.raises(DataError, match=r"other: holds none of the 2 photos .*c.txt names \(e.g. "
                                      r"'a.jpg'; the folder has 1 photos, e.g. 'z.jpg'\)"):
    C.read_caption_set(caps, str(tmp_path / "other"), verbose=False)
  ids = {"images": [{"id": "7", "file_name": "a.jpg"}],
         "annotations": [{"image_id": 7, "caption": "x"}]}
  with pytest.raises(DataError, match=r"no annotations\[\].image_id is an images\[\].id \(e.g. "
                                      r"image_id 7 vs id '7'\)"):
    C.read_coco(_json(tmp_path / "c.json", ids))
  with pytest.raises(DataError, match=r"is a folder; pass the caption file in it"):
    C.read_caption_set(str(tmp_path / "other"))


def test_csv_header_is_skipped_and_said(tmp_path, capsys):
  path = _write(tmp_path / "captions.txt", "image,caption\na.jpg,x\n")
  assert C.read_caption_set(path).num_captions == 1
  assert (f"xmr_jax captions: {path}: line 1 is not `name.jpg, caption`; skipped as a "
          "header: 'image,caption'") in capsys.readouterr().err


def test_write_dropped(tmp_path):
  dropped = [C.Dropped("0007.jpg (2 captions; c.txt:5,6)", C.MISSING_IMAGE),
             C.Dropped("c.txt:9: ảnh.jpg (caption 6 or later)", C.BEYOND_K)]
  path = str(tmp_path / "out" / "dropped.txt")
  C.write_dropped(path, dropped)
  assert open(path, encoding="utf-8").read() == (
      "missing image\t0007.jpg (2 captions; c.txt:5,6)\n"
      "beyond k\tc.txt:9: ảnh.jpg (caption 6 or later)\n")
  assert os.listdir(tmp_path / "out") == ["dropped.txt"]   # no temporary file left
  C.write_dropped(path, [])
  assert open(path).read() == ""
