"""TFDS builder for CUB-200-2011 with Reed et al. captions, PCME's splits (array_record)."""
from xmr_jax.data.tfds_cub.cub_captions import build
from xmr_jax.data.tfds_cub.cub_captions import CubCaptions
from xmr_jax.data.tfds_cub.cub_captions import CubCaptionsConfig
from xmr_jax.data.tfds_cub.cub_captions import make_config

__all__ = ["build", "CubCaptions", "CubCaptionsConfig", "make_config"]
