"""Official PyTorch checkpoints -> Flax variables.

SGRAF (Paranioar/SGRAF, branch ``python3.6``): ``sgraf_params_from_state_dict`` maps the
``state_dict`` names of the official modules onto ``xmr_jax.models.sgraf``:

* ``EncoderSimilarity`` names (``sim_tranloc_w.weight``, ``SGR_module.0.graph_query_w.bias``,
  ``v_global_w.embedding_local.1.running_mean``, ...), bare or prefixed with ``sim_enc.``,
  become the ``SGRAFHead`` tree: a numeric index joins its parent (``SGR_module.0`` ->
  ``SGR_module_0``, ``embedding_local.1`` -> ``embedding_local_1``); Linear ``weight`` (out, in)
  -> ``kernel`` (in, out); BatchNorm ``weight``/``bias`` -> ``scale``/``bias`` and
  ``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var``.
* ``img_enc.fc.*`` (``EncoderImage``) -> ``img_enc/fc``; ``txt_enc.embed.weight`` ->
  ``txt_enc/embed/embedding``; ``txt_enc.cap_rnn.{weight,bias}_{ih,hh}_l{k}[_reverse]`` (torch
  GRU, gates stacked r, z, n) -> the flax ``GRUCell``s of ``GRUTextEncoder``: the r and z
  gates' two biases are summed into the input Dense (flax has no recurrent bias there), the
  n gate keeps b_in on the input and b_hn on the recurrent Dense (inside r * (.)), exactly
  torch's equations.

If encoder names are present the result is the whole ``SGRAF`` model's variables
(``img_enc``, ``txt_enc``, ``sim_enc``), else the ``SGRAFHead``'s alone.
"""
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from xmr_jax.backbones import torch_pickle
from xmr_jax.common.errors import InputError

Variables = Dict[str, Any]

_ENCODER_PREFIXES = ("img_enc.", "txt_enc.")


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ValueError(f"two official entries map onto {'/'.join(path)}")
  tree[path[-1]] = value


def _module_path(name: str) -> Tuple[str, ...]:
  """'SGR_module.0.graph_query_w' -> ('SGR_module_0', 'graph_query_w')."""
  out = []
  for part in name.split("."):
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def _head_variables(state_dict: Mapping[str, np.ndarray]) -> Variables:
  """Similarity-head names (no prefix) -> {'params': ..., 'batch_stats': ...}."""
  params, stats = {}, {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    module, _, leaf = name.rpartition(".")
    path = _module_path(module)
    if leaf == "num_batches_tracked":
      continue
    if leaf in ("running_mean", "running_var"):
      _set(stats, path + ({"running_mean": "mean", "running_var": "var"}[leaf],),
           value.astype(np.float32))
    elif leaf == "weight" and value.ndim == 2:
      _set(params, path + ("kernel",), value.T.astype(np.float32))
    elif leaf == "weight" and value.ndim == 1:
      _set(params, path + ("scale",), value.astype(np.float32))
    elif leaf == "bias":
      _set(params, path + ("bias",), value.astype(np.float32))
    else:
      raise NotImplementedError(f"SGRAF converter: no mapping for official parameter {name!r} "
                                f"with shape {value.shape}")
  return {"params": params, "batch_stats": stats}


def _gru_layers(names) -> Tuple[int, bool]:
  layers = {int(m.group(1)) for n in names if (m := re.search(r"_l(\d+)", n))}
  return (max(layers) + 1 if layers else 0), any(n.endswith("_reverse") for n in names)


def _gru_cell(w_ih, w_hh, b_ih, b_hh) -> Dict[str, Any]:
  """One torch GRU direction (gates r, z, n stacked on the rows) -> flax GRUCell params."""
  h = w_hh.shape[1]
  wi = [w_ih[g * h:(g + 1) * h].T for g in range(3)]
  wh = [w_hh[g * h:(g + 1) * h].T for g in range(3)]
  bi = [b_ih[g * h:(g + 1) * h] for g in range(3)]
  bh = [b_hh[g * h:(g + 1) * h] for g in range(3)]
  f = lambda x: np.asarray(x, np.float32)
  return {"ir": {"kernel": f(wi[0]), "bias": f(bi[0] + bh[0])}, "hr": {"kernel": f(wh[0])},
          "iz": {"kernel": f(wi[1]), "bias": f(bi[1] + bh[1])}, "hz": {"kernel": f(wh[1])},
          "in": {"kernel": f(wi[2]), "bias": f(bi[2])},
          "hn": {"kernel": f(wh[2]), "bias": f(bh[2])}}


def _gru_cell_names(num_layers: int, bidirectional: bool) -> Dict[Tuple[int, bool], str]:
  """Names the ``GRUTextEncoder`` gives its cells, read from an abstract init (no compute).

  The cells are created in the order layer 0 fwd, layer 0 bwd, layer 1 fwd, ...; flax names
  them ``GRUCell_<k>`` in that order when they are built inside the encoder's scope.
  """
  import jax
  import jax.numpy as jnp
  from xmr_jax.models.encoders import GRUTextEncoder
  enc = GRUTextEncoder(4, 2, 2, num_layers=num_layers, bidirectional=bidirectional)
  shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
                                           jnp.ones((1, 2), bool), train=False))
  keys = set(shapes["params"])
  order = [(layer, rev) for layer in range(num_layers)
           for rev in ((False, True) if bidirectional else (False,))]
  if all(f"GRUCell_{k}" in keys for k in range(len(order))):
    return {o: f"GRUCell_{k}" for k, o in enumerate(order)}
  raise NotImplementedError(f"SGRAF converter: unrecognised GRUTextEncoder parameter names "
                            f"{sorted(keys)}; update xmr_jax.convert._gru_cell_names")


def _text_encoder_params(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """``txt_enc.*`` (prefix stripped) -> GRUTextEncoder params."""
  rnn = {k[len("cap_rnn."):]: np.asarray(v) for k, v in sd.items() if k.startswith("cap_rnn.")}
  unknown = sorted(k for k in sd if k != "embed.weight" and not k.startswith("cap_rnn."))
  if unknown or "embed.weight" not in sd:
    raise NotImplementedError(f"SGRAF converter: unsupported text-encoder entries {unknown} "
                              "(expected embed.weight and cap_rnn.* of a torch nn.GRU)")
  num_layers, bidir = _gru_layers(rnn)
  if not bidir:
    raise NotImplementedError("SGRAF converter: a unidirectional cap_rnn (bi_gru off) is not "
                              "supported; GRUTextEncoder is built bidirectional for SGRAF")
  out = {"embed": {"embedding": np.asarray(sd["embed.weight"], np.float32)}}
  for (layer, rev), cell in _gru_cell_names(num_layers, bidir).items():
    sfx = f"_l{layer}" + ("_reverse" if rev else "")
    out[cell] = _gru_cell(rnn["weight_ih" + sfx], rnn["weight_hh" + sfx], rnn["bias_ih" + sfx],
                          rnn["bias_hh" + sfx])
  return out


def sgraf_params_from_state_dict(state_dict: Mapping[str, np.ndarray],
                                 variant: str) -> Variables:
  """Official SGRAF ``state_dict`` (numpy arrays) -> flax variables (params + batch_stats).

  Head-only dicts give ``SGRAFHead`` variables; dicts with ``img_enc.*`` / ``txt_enc.*``
  names give ``SGRAF`` model variables (head under ``sim_enc``). ``variant`` ('sgr' | 'saf')
  is checked against the names present.
  """
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  head = {k[len("sim_enc."):] if k.startswith("sim_enc.") else k: v for k, v in sd.items()
          if not k.startswith(_ENCODER_PREFIXES)}
  has_sgr = any(k.startswith("SGR_module.") for k in head)
  has_saf = any(k.startswith("SAF_module.") for k in head)
  if variant not in ("sgr", "saf") or (variant == "sgr") != has_sgr or (variant == "saf") != has_saf:
    raise ValueError(f"variant={variant!r} does not match the state_dict "
                     f"(SGR_module present: {has_sgr}, SAF_module present: {has_saf})")
  head_vars = _head_variables(head)
  if not any(k.startswith(_ENCODER_PREFIXES) for k in sd):
    return head_vars
  img = {k[len("img_enc."):]: v for k, v in sd.items() if k.startswith("img_enc.")}
  if set(img) != {"fc.weight", "fc.bias"}:
    raise NotImplementedError(f"SGRAF converter: unsupported image-encoder entries {sorted(img)}")
  txt = {k[len("txt_enc."):]: v for k, v in sd.items() if k.startswith("txt_enc.")}
  params = {"img_enc": {"fc": {"kernel": img["fc.weight"].T.astype(np.float32),
                               "bias": img["fc.bias"].astype(np.float32)}},
            "txt_enc": _text_encoder_params(txt),
            "sim_enc": head_vars["params"]}
  return {"params": params, "batch_stats": {"sim_enc": head_vars["batch_stats"]}}


class CheckpointError(InputError):
  """An official checkpoint file that is not the expected ``{'model': [3 state dicts], ...}``."""


_PREFIXES = ("img_enc.", "txt_enc.", "sim_enc.")


def _flat_state_dicts(ckpt: Any, path: str) -> Dict[str, np.ndarray]:
  """``{'model': [img_enc, txt_enc, sim_enc]}`` (or the bare list) -> prefixed flat dict."""
  parts = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
  if not (isinstance(parts, (list, tuple)) and len(parts) == 3):
    raise CheckpointError(f"{path}: not an official SGRAF checkpoint: expected "
                          f"checkpoint['model'] to be the list of three state dicts "
                          f"[img_enc, txt_enc, sim_enc], found {type(parts).__name__}")
  flat = {}
  for prefix, sd in zip(_PREFIXES, parts):
    if not isinstance(sd, dict):
      raise CheckpointError(f"{path}: checkpoint['model'] entry {prefix[:-1]} is a "
                            f"{type(sd).__name__}, not a state dict")
    for k, v in sd.items():
      if not (isinstance(k, str) and isinstance(v, np.ndarray)):
        raise CheckpointError(f"{path}: state dict {prefix[:-1]} holds {k!r}: "
                              f"{type(v).__name__}, expected a name and a tensor")
      flat[prefix + k] = v
  return flat


def load_official_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """Reads an official SGRAF ``.pth.tar`` -> flat ``{name: np.ndarray}``, without PyTorch.

  The official ``save_checkpoint`` stores ``{'model': [img_enc, txt_enc, sim_enc state dicts],
  'opt': argparse.Namespace, 'epoch': ..., ...}`` with ``torch.save`` (legacy or zip format);
  the three dicts get the prefixes ``img_enc.``, ``txt_enc.``, ``sim_enc.``. The file is read
  by :mod:`xmr_jax.backbones.torch_pickle`, whose unpickler builds only tensors, ordered dicts,
  plain values and (inert) argparse namespaces, and refuses any other pickled global without
  importing or calling it; no sha256 is checked (the file is the user's).

  Returns: ``{'img_enc.fc.weight': (out, in) float32, ...}``, each array C-contiguous with the
    dtype torch saved (``num_batches_tracked`` int64 0-d), ready for
    :func:`sgraf_params_from_state_dict`.
  Raises:
    torch_pickle.WeightsFileError: missing file or not a readable torch.save file.
    torch_pickle.RefusedPickleError: the file pickles any other object (names ``module.name``).
    CheckpointError: a torch.save file without the official ``'model'`` layout.
    (All are ``InputError`` subclasses with one message naming ``path``.)
  """
  ckpt = torch_pickle.load(path, None, allow_namespace=True)
  return _flat_state_dicts(ckpt, path)
