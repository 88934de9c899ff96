"""Photos (xmr_jax/data/captions/photos.py): listing, the cheap check, loading as RGB.

Every image is a few pixels written by PIL here; each conversion checks pixel values a wrong
conversion would change.
"""
import numpy as np
import pytest
from PIL import Image

from xmr_jax.data.captions import check_photo, list_photos, load_photo
from xmr_jax.data.errors import DataError


def _noise_jpeg(path, size=(48, 32)):
  pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, "JPEG")
  return str(path)


def _rgb(path):
  image = load_photo(str(path))
  assert image.mode == "RGB"
  return np.asarray(image).astype(int)


def test_list_photos_recursive_sorted_without_hidden_or_other_files(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / ".cache").mkdir()
  for name in ("z.JPG", "a.png", "b/c.jpeg", ".cache/x.jpg", ".DS_Store", "list.txt"):
    (tmp_path / name).write_bytes(b"x")
  assert list_photos(str(tmp_path)) == ["a.png", "b/c.jpeg", "z.JPG"]


def test_check_photo_passes_whole_files_and_names_broken_ones(tmp_path):
  whole = _noise_jpeg(tmp_path / "whole.jpg")
  assert check_photo(whole) is None
  data = open(whole, "rb").read()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
  assert check_photo(str(tmp_path / "cut.jpg")) == "truncated JPEG (no end-of-image marker)"
  (tmp_path / "pad.jpg").write_bytes(data + b"\0" * 100)   # padding after the end marker is fine
  assert check_photo(str(tmp_path / "pad.jpg")) is None
  Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "p.png")
  png = (tmp_path / "p.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(png[:-20])            # IEND and part of the data lost
  assert check_photo(str(tmp_path / "cut.png")).startswith("PIL cannot read it")
  (tmp_path / "text.jpg").write_text("not a photo at all")
  assert "UnidentifiedImageError" in check_photo(str(tmp_path / "text.jpg"))
  (tmp_path / "empty.jpg").write_bytes(b"")
  assert check_photo(str(tmp_path / "empty.jpg")).startswith("PIL cannot read it")


def test_load_photo_rgb_jpeg_is_unchanged_in_size(tmp_path):
  image = load_photo(_noise_jpeg(tmp_path / "x.jpg"))
  assert image.mode == "RGB" and image.size == (48, 32)
  assert np.asarray(image).dtype == np.uint8 and np.asarray(image).shape == (32, 48, 3)


def test_load_photo_cmyk(tmp_path):
  Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")   # pure red ink
  assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
  np.testing.assert_allclose(_rgb(tmp_path / "c.jpg")[4, 4], [255, 0, 0], atol=6)


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 100, [100, 100, 100]),
    ("1", 1, [255, 255, 255]),
    ("LA", (100, 255), [100, 100, 100]),     # opaque: the grey itself
    ("LA", (100, 0), [255, 255, 255]),       # transparent: white, not the stored grey
    ("RGBA", (0, 0, 200, 0), [255, 255, 255]),
    ("RGBA", (0, 0, 0, 128), [127, 127, 127]),   # half alpha on white
    ("RGBA", (10, 20, 200, 255), [10, 20, 200]),
])
def test_load_photo_greyscale_and_alpha(tmp_path, mode, value, expected):
  Image.new(mode, (3, 2), value).save(tmp_path / "x.png")
  assert Image.open(tmp_path / "x.png").mode == mode
  np.testing.assert_allclose(_rgb(tmp_path / "x.png")[1, 2], expected, atol=1)


def test_load_photo_palette_with_and_without_transparency(tmp_path):
  palette = Image.new("P", (2, 1))
  palette.putpalette([200, 10, 10, 0, 0, 0] + [0] * 762)
  palette.putpixel((0, 0), 0)
  palette.putpixel((1, 0), 1)
  palette.save(tmp_path / "p.png")
  assert _rgb(tmp_path / "p.png").tolist() == [[[200, 10, 10], [0, 0, 0]]]
  palette.save(tmp_path / "t.png", transparency=1)     # index 1 is transparent
  assert Image.open(tmp_path / "t.png").mode == "P"
  assert _rgb(tmp_path / "t.png").tolist() == [[[200, 10, 10], [255, 255, 255]]]


def test_load_photo_16_bit_greyscale_keeps_the_top_bits(tmp_path):
  Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "g.png")
  assert Image.open(tmp_path / "g.png").mode.startswith("I")
  assert _rgb(tmp_path / "g.png")[0, :, 0].tolist() == [0, 128, 255]


def test_load_photo_applies_exif_rotation(tmp_path):
  # 40 x 20, left half red, right half blue; orientation 6 = "rotate 90 clockwise to show".
  image = Image.new("RGB", (40, 20), (0, 0, 255))
  image.paste((255, 0, 0), (0, 0, 20, 20))
  exif = Image.Exif()
  exif[0x0112] = 6
  image.save(tmp_path / "r.jpg", exif=exif.tobytes())
  assert Image.open(tmp_path / "r.jpg").size == (40, 20)
  loaded = load_photo(str(tmp_path / "r.jpg"))
  assert loaded.size == (20, 40)
  pixels = np.asarray(loaded).astype(int)
  np.testing.assert_allclose(pixels[5, 10], [255, 0, 0], atol=12)    # left went to the top
  np.testing.assert_allclose(pixels[35, 10], [0, 0, 255], atol=12)


def test_load_photo_errors_name_the_file(tmp_path):
  data = open(_noise_jpeg(tmp_path / "x.jpg", size=(64, 64)), "rb").read()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match=r"cut.jpg: cannot be read as a photo \(OSError: image "
                                      r"file is truncated"):
    load_photo(str(tmp_path / "cut.jpg"))
  Image.new("F", (2, 2)).save(tmp_path / "f.tif")
  with pytest.raises(DataError, match=r"f.tif: .*mode 'F' has no RGB conversion"):
    load_photo(str(tmp_path / "f.tif"))
  with pytest.raises(DataError, match=r"gone.jpg: photo not found"):
    load_photo(str(tmp_path / "gone.jpg"))
