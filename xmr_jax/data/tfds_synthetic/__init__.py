"""TFDS builder for the synthetic retrieval benchmark (array_record, readable without TF)."""
from xmr_jax.data.tfds_synthetic.synthetic_retrieval import build
from xmr_jax.data.tfds_synthetic.synthetic_retrieval import SyntheticRetrieval
from xmr_jax.data.tfds_synthetic.synthetic_retrieval import SyntheticRetrievalConfig

__all__ = ["build", "SyntheticRetrieval", "SyntheticRetrievalConfig"]
