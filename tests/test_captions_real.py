"""The caption readers on the two real sets in ../shared/real (coco_mini, uitviic).

The facts asserted are the sets' own (see ../shared/real/README.md), counted by hand from the
files; the tests skip when the shared data is not beside the checkout.
"""
import collections
import os

import numpy as np
import pytest

from xmr_jax.data import captions as C

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "real")
COCO = os.path.join(REAL, "coco_mini")
UIT = os.path.join(REAL, "uitviic")


def _need(folder):
  if not os.path.isdir(folder):
    pytest.skip(f"real data not found at {os.path.normpath(folder)} (the shared data folder "
                "beside the checkout); these tests only run where it exists")


def test_coco_mini_captions_instances_and_classes():
  _need(COCO)
  s = C.read_caption_set(os.path.join(COCO, "captions.json"), os.path.join(COCO, "images"),
                         instances=os.path.join(COCO, "instances.json"), captions_per_image=5,
                         verbose=False)
  assert s.format == "coco" and s.dropped == []
  assert len(s.images) == 239 and s.num_captions == 1195
  assert {len(im.captions) for im in s.images} == {5}
  assert len(s.class_names) == 80 and s.class_names[0] == "person"
  with_boxes = [im for im in s.images if len(im.classes)]
  assert len(with_boxes) == 159 and sum(len(im.classes) for im in s.images) == 1363
  boxes = np.concatenate([im.boxes for im in with_boxes])
  assert boxes.dtype == np.float32 and (boxes[:, 2:] >= boxes[:, :2]).all()
  hot = C.multi_hot(s)
  assert hot.shape == (239, 80) and int((hot.sum(1) > 0).sum()) == 159
  assert set(np.concatenate([im.classes for im in with_boxes]).tolist()) <= set(range(80))


def test_uitviic_faults_with_k5():
  _need(UIT)
  s = C.read_caption_set(os.path.join(UIT, "captions.txt"), os.path.join(UIT, "images"),
                         captions_per_image=5, verbose=False)
  assert s.format == "csv"
  assert C.count_dropped(s.dropped) == {C.MISSING_IMAGE: 2, C.NO_CAPTION: 3, C.TOO_FEW: 5,
                                        C.BEYOND_K: 19}
  by_reason = collections.defaultdict(list)
  for d in s.dropped:
    by_reason[d.reason].append(d.item.split(" ")[0])
  # Two names in captions.txt are not on disk; the folder has them with other zero padding.
  assert by_reason[C.MISSING_IMAGE] == ["0000046.jpg", "0000059.jpg"]
  assert by_reason[C.NO_CAPTION] == ["00000059.jpg", "000016.jpg", "000046.jpg"]
  assert by_reason[C.TOO_FEW] == ["0000234.jpg", "0001387.jpg", "0001605.jpg", "0001815.jpg",
                                  "0001971.jpg"]
  assert len(s.images) == 2932 - 3 - 5 and s.num_captions == 5 * len(s.images)


def test_uitviic_captions_as_written():
  _need(UIT)
  s = C.read_csv(os.path.join(UIT, "captions.txt"))
  assert s.dropped == [] and sum(len(im.captions) for im in s.images) == 14660
  counts = collections.Counter(len(im.captions) for im in s.images)
  assert counts == {5: 2922, 1: 3, 4: 2, 9: 1, 10: 3}     # names in the file, 2 not on disk
  flat = [c for im in s.images for c in im.captions]
  # Commas stay in captions; the 10 double-quoted fields lose their quotes, nothing else does.
  assert sum("," in c for c in flat) == 185
  assert not [c for c in flat if c.startswith('"') or c.endswith('"')]
  lines = open(os.path.join(UIT, "captions.txt"), encoding="utf-8").read().splitlines()
  unquoted = [l for l in lines if "," in l.partition(",")[2] and
              not l.partition(",")[2].strip().startswith('"')]
  assert len(unquoted) == 175
  by_line = {int(src.rpartition(":")[2]): c for im in s.images
             for src, c in zip(im.sources, im.captions)}
  assert by_line[624] == ("Mọi người ngồi bên đài phun nước, một chàng trai có tóc tím nói "
                          "chuyện với một chàng trai đội mũ .")
  assert by_line[1083] == ("Một cậu bé không mặc áo, ướt sũng trong nước, đang khoe cơ bắp "
                           "trong khi cười .")
  assert by_line[23] == ("Không gian mở rộng lớn với những dãy núi trùng điệp phía xa, thể "
                         "hiện sự bao la của thiên nhiên .")
