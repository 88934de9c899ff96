"""Caption dataset readers: real photos and their captions in one internal form.

Formats (``format="auto"`` picks one from the file name and first line or keys):

=========== ======================================================================
``coco``     COCO captions json (``images[].id/file_name``, ``annotations[].image_id/caption``),
             optionally with a COCO instances json for boxes and classes
``karpathy`` Karpathy's split json (dataset_coco.json, dataset_flickr30k.json): gives splits
``flickr``   Flickr8k/Flickr30k token file, ``name.jpg#i<TAB>caption``
``csv``      ``name.jpg, caption`` (or a tab), e.g. UIT-ViIC-style captions.txt
=========== ======================================================================

Typical use::

  from xmr_jax.data import captions
  s = captions.read_caption_set("uitviic/captions.txt", "uitviic/images", captions_per_image=5)
  s = captions.split_images(s, n_dev=300, n_test=300, seed=0)   # sources without splits
  captions.write_dropped("out/dropped.txt", s.dropped)
  photo = captions.load_photo("uitviic/images/" + s.images[0].file)   # RGB PIL image

Faults of a real dataset (a caption naming a missing photo, a photo without caption, fewer
than k captions, an unreadable or truncated photo, an empty caption) are dropped and listed
(``CaptionSet.dropped``, one summary line on stderr), or each is a DataError with
``strict=True``. Captions are put through ``precomp.normalize_caption``. User files are only
ever parsed as text or JSON (nothing is unpickled).
"""
from xmr_jax.data.captions.form import (BEYOND_K, EMPTY_CAPTION, MISSING_IMAGE, NO_CAPTION,
                                        REASONS, REPEATED_ID, SPLITS, TOO_FEW, UNREADABLE,
                                        CaptionedImage,
                                        CaptionSet, Dropped, count_dropped, keep_k, multi_hot,
                                        split_counts, split_images, summary, write_dropped)
from xmr_jax.data.captions.json_formats import (KARPATHY_SPLITS, attach_instances, read_coco,
                                                read_instances, read_karpathy)
from xmr_jax.data.captions.photos import (PHOTO_SUFFIXES, check_photo, list_photos,
                                          load_photo, to_rgb)
from xmr_jax.data.captions.read import (CAPTION_FORMATS, CAPTION_PATTERNS, FORMATS,
                                        CaptionFormat, caption_format, check_files,
                                        choose_format, detect_format, read_caption_set)
from xmr_jax.data.captions.text_formats import (parse_csv_line, read_csv, read_flickr,
                                                unquote)
from xmr_jax.data.errors import DataError

__all__ = [
    "BEYOND_K", "EMPTY_CAPTION", "MISSING_IMAGE", "NO_CAPTION", "REASONS", "REPEATED_ID",
    "SPLITS", "TOO_FEW",
    "UNREADABLE", "CaptionedImage", "CaptionSet", "Dropped", "count_dropped", "keep_k",
    "multi_hot", "split_counts", "split_images", "summary", "write_dropped",
    "KARPATHY_SPLITS", "attach_instances", "read_coco", "read_instances", "read_karpathy",
    "PHOTO_SUFFIXES", "check_photo", "list_photos", "load_photo", "to_rgb",
    "CAPTION_FORMATS", "CAPTION_PATTERNS", "FORMATS", "CaptionFormat", "caption_format",
    "check_files", "choose_format", "detect_format", "read_caption_set",
    "parse_csv_line", "read_csv", "read_flickr", "unquote", "DataError",
]
