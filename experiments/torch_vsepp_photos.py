"""VSE++ fine-tuning step from photos in PyTorch, for timing against xmr_jax's. Benchmark only.

Runs under a separate torch venv (torch is never a dependency of xmr_jax); started as a
child process by ``experiments/benchmark.py --config=configs/vsepp.py:data=photos`` (flag
``--torch_python``):

  /work/torchvenv/bin/python experiments/torch_vsepp_photos.py REQUEST.json

The model is the one ``configs/vsepp.py:data=photos`` trains, written again in torch:
EfficientNet-Lite (``torch_effnet_lite.EfficientNetLite``, ImageNet weights, BatchNorm in
eval mode) -> mean of the grid cells -> ``Linear(1280, embed)`` -> l2 norm; captions through
a word embedding and a one-layer GRU, the state at the last real token, l2 norm; VSE++'s
hinge loss summed over the negatives of the batch (VSE0, the preset's first epochs; margin
from the request); Adam with the backbone's learning rate scaled (two parameter groups, as
``train.backbone_lr_scale``) and the gradient's global norm clipped (``clip_grad_norm_``, as
the official ``train.py``). The inputs are xmr_jax's own batch (augmented uint8 photos,
token ids, lengths), written by the benchmark.

REQUEST.json: {"weights", "width", "depth", "photos": .npy (B, S, S, 3) uint8, "tokens":
.npy (M, L) int64, "lengths": .npy (M,) int64, "vocab_size", "word_dim", "embed_dim",
"margin", "learning_rate", "backbone_lr_scale", "grad_clip", "steps", "threads"}. Writes one
JSON object to stdout: seconds per step (median of ``steps`` after one warm-up), images/s,
peak RSS (VmHWM).
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_effnet_lite import load  # noqa: E402


class VSEPhotos(nn.Module):
  def __init__(self, net, vocab_size, word_dim, embed_dim):
    super().__init__()
    self.net = net
    self.img_fc = nn.Linear(1280, embed_dim)
    self.embed = nn.Embedding(vocab_size, word_dim)
    self.gru = nn.GRU(word_dim, embed_dim, batch_first=True)

  def forward(self, photos_nchw, tokens, lengths):
    pooled = self.net.feature_map(photos_nchw).mean(dim=(2, 3))
    im = F.normalize(self.img_fc(pooled), dim=-1)
    out, _ = self.gru(self.embed(tokens))
    last = out[torch.arange(len(tokens)), lengths - 1]
    return im, F.normalize(last, dim=-1)


def vse0_loss(im, s, margin):
  """VSE++'s ContrastiveLoss with the sum over negatives (max_violation=False)."""
  scores = im @ s.t()
  d = scores.diag().view(-1, 1)
  eye = torch.eye(len(scores), dtype=torch.bool)
  cost_s = (margin + scores - d).clamp(min=0).masked_fill(eye, 0)
  cost_im = (margin + scores - d.t()).clamp(min=0).masked_fill(eye, 0)
  return cost_s.sum() + cost_im.sum()


def main(request_path: str) -> None:
  with open(request_path) as f:
    req = json.load(f)
  torch.set_num_threads(req.get("threads", 2))
  torch.manual_seed(0)
  net = load(req["weights"], req.get("width", 1.0), req.get("depth", 1.0))
  model = VSEPhotos(net, req["vocab_size"], req["word_dim"], req["embed_dim"])
  model.train()
  model.net.eval()          # BatchNorm with the ImageNet statistics, as xmr_jax's tower
  lr = req["learning_rate"]
  opt = torch.optim.Adam([
      {"params": [p for n, p in model.named_parameters() if not n.startswith("net.")]},
      {"params": list(model.net.parameters()), "lr": lr * req["backbone_lr_scale"]}], lr=lr)
  photos = torch.from_numpy(np.load(req["photos"])).permute(0, 3, 1, 2).contiguous()
  tokens = torch.from_numpy(np.load(req["tokens"])).long()
  lengths = torch.from_numpy(np.load(req["lengths"])).long()

  def step():
    x = photos.float() / 127.5 - 1.0            # the Lite entries' [-1, 1] normalisation
    im, s = model(x, tokens, lengths)
    loss = vse0_loss(im, s, req["margin"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), req["grad_clip"])
    opt.step()
    return float(loss)

  step()                                        # warm-up
  times = []
  for _ in range(req["steps"]):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  per_step = statistics.median(times)
  print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "seconds_per_step": per_step, "step_seconds": times,
                    "images_per_sec": len(photos) / per_step,
                    "peak_rss_bytes": _peak_rss()}))


def _peak_rss() -> int:
  """This process's resident-memory high-water mark (VmHWM): getrusage's ru_maxrss would
  keep the parent's (the JAX benchmark's) peak across exec."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return -1


if __name__ == "__main__":
  main(sys.argv[1])
