"""Times the official PyTorch SGRAF and PCME code on this CPU.

Runs under a separate torch venv (torch is never a dependency of xmr_jax):

  /work/torchvenv/bin/python experiments/official_bench.py \
      --official-root /work/official --out /tmp/official_bench.json

`--official-root` holds unmodified exports of the official repositories:
  SGRAF/model.py, SGRAF/evaluation.py            (Paranioar/SGRAF, branch python3.6)
  pcme/criterions/, pcme/engine/, pcme/utils/     (naver-ai/pcme)
Their files are never edited; what they need to run on a CPU (their `.cuda()` calls,
`torch.cuda.is_available()` guards, imports of data loaders we do not use) is patched at
run time, and every patch is listed in the output JSON under "runtime_patches".

Every measurement runs in a fresh child process (this same file with `--child NAME`), so
that peak RSS (`ru_maxrss`) is attributable to it and a failure (or an out-of-memory
guard) in one of them does not stop the others. Each child uses
`torch.set_num_threads(2)`, float32 unless the official code says otherwise, one
warm-up and the median of a few repeats.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable

NUM_THREADS = 2
GIB = 1024 ** 3

# The shapes measured.  "paper" is the SGRAF paper's setting (36 BUTD regions of 2048-d,
# embed 1024, sim 256, GloVe-sized 300-d words); "small" is the 256/64/16 setting.
SGRAF_SHAPES = {
    'paper': dict(n_regions=36, img_dim=2048, word_dim=300, embed_size=1024,
                  sim_dim=256, vocab_size=10000),
    'small': dict(n_regions=16, img_dim=128, word_dim=128, embed_size=256,
                  sim_dim=64, vocab_size=10000),
}
CAPTION_LEN_RANGE = (8, 20)  # inclusive, drawn with a fixed seed
SEED = 0

RUNTIME_PATCHES = {
    'sgraf': [
      'torch.Tensor.cuda and torch.nn.Module.cuda replaced by identity (returns self): '
      'evaluation.shard_attn_scores, SGRAF.__init__/forward_emb and ContrastiveLoss '
      'call .cuda() unconditionally or under is_available().',
      'inside official model.py only, the global name `torch` is a proxy whose '
      'torch.cuda.is_available() returns True, because ContrastiveLoss.forward defines '
      'its diagonal mask `I` only under that branch (NameError otherwise); everything '
      'else is delegated to the real torch.',
      'evaluation.py imports `data` (get_test_loader) and `vocab` (Vocabulary, '
      'deserialize_vocab): empty stub modules are put in sys.modules; those names are '
      'not used by shard_attn_scores or LogCollector.',
      'small shape only: EncoderSimilarity hard-codes VisualSA(embed, 0.4, 36) whose '
      'BatchNorm1d(36) runs over the region axis; with 16 regions that BatchNorm is '
      'resized to 16 after SGRAF(opt) is built (Parameter data replaced in place, '
      'weight 1 / bias 0 as init_weights sets them, so the optimizer still holds it).',
    ],
    'pcme': [
      'engine/eval_coco.py is loaded on its own (engine/__init__ imports the trainer, '
      'datasets and models, which need data); COCOEvaluator gets '
      "extract_device='cpu', eval_device='cpu'.",
      'tqdm stubbed (identity iterator) if not installed; eval_coco uses it only as a '
      'disabled progress bar.',
      'criterion config: a dict with attribute access holding the official '
      'config/coco/pcme_coco.yaml criterion values.',
    ],
}


# ----------------------------------------------------------------------------- utils


def _mem_available_bytes() -> int:
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  return 0


def _proc_status_bytes(key: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key + ':'):
        return int(line.split()[1]) * 1024
  return 0


def _maxrss_bytes() -> int:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(fn: Callable[[], Any], warmup: int, repeats: int) -> dict:
  """Runs fn `warmup` times untimed, then `repeats` times timed; median seconds."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {'median_s': statistics.median(times), 'times_s': times,
          'warmup': warmup, 'repeats': repeats}


def _machine_info() -> dict:
  model = ''
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        model = line.split(':', 1)[1].strip()
  except OSError:
    pass
  try:
    nproc = int(subprocess.run(['nproc'], capture_output=True, text=True,
                               check=False).stdout.strip())
  except (OSError, ValueError):
    nproc = os.cpu_count()
  return {'nproc': nproc, 'lscpu_model_name': model, 'platform': platform.platform(),
          'python': platform.python_version(),
          'mem_total_gib': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB}


def _load_module(name: str, path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------- SGRAF side


class _TorchSeesCuda(types.ModuleType):
  """Delegates to torch, except torch.cuda.is_available() -> True (see RUNTIME_PATCHES)."""

  def __init__(self, torch_module):
    super().__init__('torch_seen_by_official_sgraf')
    self._torch = torch_module
    self.cuda = types.SimpleNamespace(is_available=lambda: True)

  def __getattr__(self, name):
    return getattr(self._torch, name)


def _load_sgraf(root: str):
  """Imports official SGRAF model.py / evaluation.py with the CPU run-time patches."""
  import torch
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self
  model = _load_module('model', os.path.join(root, 'SGRAF', 'model.py'))
  model.torch = _TorchSeesCuda(torch)
  data_stub = types.ModuleType('data')
  data_stub.get_test_loader = None
  vocab_stub = types.ModuleType('vocab')
  vocab_stub.Vocabulary = vocab_stub.deserialize_vocab = None
  sys.modules.setdefault('data', data_stub)
  sys.modules.setdefault('vocab', vocab_stub)
  evaluation = _load_module('evaluation', os.path.join(root, 'SGRAF', 'evaluation.py'))
  return model, evaluation


def _sgraf_opt(shape: dict, module_name: str) -> argparse.Namespace:
  # Defaults of the official opts.py (python3.6 branch): bi_gru and max_violation are
  # store_false flags, i.e. on; margin 0.2, grad_clip 2, lr 2e-4, 1 GRU layer, 3 SGR steps.
  return argparse.Namespace(
      img_dim=shape['img_dim'], word_dim=shape['word_dim'],
      embed_size=shape['embed_size'], sim_dim=shape['sim_dim'],
      vocab_size=shape['vocab_size'], num_layers=1, bi_gru=True, no_imgnorm=False,
      no_txtnorm=False, module_name=module_name, sgr_step=3, margin=0.2,
      max_violation=True, grad_clip=2.0, learning_rate=2e-4)


def _build_sgraf(model_mod, opt, n_regions: int):
  """Official SGRAF(opt); VisualSA's BatchNorm1d(36) resized in place if n_regions != 36."""
  import torch
  model = model_mod.SGRAF(opt)
  bn = model.sim_enc.v_global_w.embedding_local[1]
  if n_regions != bn.num_features:
    # Resize the Parameters' data in place so that SGRAF.params and the Adam optimizer
    # (which hold these Parameter objects; Adam state is created lazily) stay valid.
    # Values as VisualSA.init_weights sets them: weight 1, bias 0.
    bn.num_features = n_regions
    bn.weight.data = torch.ones(n_regions)
    bn.bias.data = torch.zeros(n_regions)
    bn.running_mean = torch.zeros(n_regions)
    bn.running_var = torch.ones(n_regions)
  return model


def _caption_lengths(rng, n: int) -> list[int]:
  lo, hi = CAPTION_LEN_RANGE
  return [int(x) for x in rng.integers(lo, hi + 1, size=n)]


def _sgraf_embeddings(rng, n_img: int, n_cap: int, shape: dict):
  """Region / word embeddings as encode_data leaves them: float64, l2-normed, 0-padded."""
  import numpy as np
  e, r = shape['embed_size'], shape['n_regions']
  img = rng.standard_normal((n_img, r, e))
  img /= np.linalg.norm(img, axis=-1, keepdims=True)
  lens = _caption_lengths(rng, n_cap)
  cap = np.zeros((n_cap, max(lens), e))
  for i, n in enumerate(lens):
    words = rng.standard_normal((n, e))
    cap[i, :n] = words / np.linalg.norm(words, axis=-1, keepdims=True)
  return img, cap, lens


def child_sgraf_score(p: dict) -> dict:
  """pairs/s of official evaluation.shard_attn_scores -> SGRAF.forward_sim."""
  import numpy as np
  import torch
  model_mod, evaluation = _load_sgraf(p['official_root'])
  shape = SGRAF_SHAPES[p['shape']]
  torch.manual_seed(SEED)
  model = _build_sgraf(model_mod, _sgraf_opt(shape, p['module']), shape['n_regions'])
  model.val_start()
  rng = np.random.default_rng(SEED)
  img, cap, lens = _sgraf_embeddings(rng, p['n_img'], p['n_cap'], shape)
  opt = _sgraf_opt(shape, p['module'])
  sims = {}

  def run():
    with contextlib.redirect_stdout(sys.stderr):  # it prints a '\r>>' progress line
      sims['v'] = evaluation.shard_attn_scores(model, img, cap, lens, opt,
                                               shard_size=p['shard_size'])
  t = _timed(run, p['warmup'], p['repeats'])
  assert sims['v'].shape == (p['n_img'], p['n_cap'])
  assert np.isfinite(sims['v']).all()
  pairs = p['n_img'] * p['n_cap']
  t.update(pairs=pairs, pairs_per_s=pairs / t['median_s'],
           caption_lengths_mean=float(np.mean(lens)))
  return t


def child_sgraf_train(p: dict) -> dict:
  """Seconds per official SGRAF.train_emb step (forward_emb, forward_sim, loss, Adam)."""
  import numpy as np
  import torch
  model_mod, evaluation = _load_sgraf(p['official_root'])
  shape = SGRAF_SHAPES[p['shape']]
  torch.manual_seed(SEED)
  model = _build_sgraf(model_mod, _sgraf_opt(shape, p['module']), shape['n_regions'])
  model.logger = evaluation.LogCollector()
  model.train_start()
  rng = np.random.default_rng(SEED)
  b = p['batch']
  images = torch.from_numpy(
      rng.standard_normal((b, shape['n_regions'], shape['img_dim'])).astype(np.float32))
  # The official collate_fn sorts a batch by caption length, longest first
  # (pack_padded_sequence needs it).
  lens = sorted(_caption_lengths(rng, b), reverse=True)
  captions = torch.zeros(b, max(lens), dtype=torch.long)
  for i, n in enumerate(lens):
    captions[i, :n] = torch.from_numpy(rng.integers(1, shape['vocab_size'], size=n))
  rss0 = _maxrss_bytes()
  t = _timed(lambda: model.train_emb(images, captions, lens), p['warmup'], p['repeats'])
  loss = model.logger.meters['Loss'].val
  assert np.isfinite(loss)
  t.update(last_loss=float(loss), peak_rss_bytes=_maxrss_bytes(),
           peak_rss_delta_bytes=_maxrss_bytes() - rss0)
  return t


# -------------------------------------------------------------------------- PCME side


class _Config(dict):
  """dict with attribute access, as the official config objects behave."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e


# config/coco/pcme_coco.yaml, criterion section (uniform_lambda absent -> 0).
PCME_CRITERION = _Config(init_negative_scale=15.0, init_shift=15.0, num_samples=7,
                         vib_beta=1e-5)


def _load_pcme(root: str):
  pcme_root = os.path.join(root, 'pcme')
  sys.path.insert(0, pcme_root)
  try:
    import tqdm  # noqa: F401
  except ImportError:
    stub = types.ModuleType('tqdm')
    stub.tqdm = lambda iterable=None, *a, **k: iterable
    sys.modules['tqdm'] = stub
  from criterions.probemb import MCSoftContrastiveLoss  # official
  eval_coco = _load_module('pcme_eval_coco',
                           os.path.join(pcme_root, 'engine', 'eval_coco.py'))
  return MCSoftContrastiveLoss, eval_coco


def child_pcme_loss(p: dict) -> dict:
  """Official MCSoftContrastiveLoss forward + backward; seconds and peak RSS."""
  import torch
  loss_cls, _ = _load_pcme(p['official_root'])
  b, j, d = p['batch'], p['n_samples'], p['dim']
  torch.manual_seed(SEED)
  criterion = loss_cls(PCME_CRITERION)
  img = torch.randn(b, j, d, requires_grad=True)
  cap = torch.randn(b, j, d, requires_grad=True)
  img_ls = torch.randn(b, d, requires_grad=True)
  cap_ls = torch.randn(b, d, requires_grad=True)
  out = {}

  def step():
    for x in (img, cap, img_ls, cap_ls):
      x.grad = None
    loss, loss_dict = criterion(img, cap, img_ls, cap_ls)
    loss.backward()
    out['loss'] = loss_dict['loss']

  rss0 = _maxrss_bytes()
  t = _timed(step, p['warmup'], p['repeats'])
  t.update(loss=out['loss'], baseline_rss_bytes=rss0, peak_rss_bytes=_maxrss_bytes(),
           peak_rss_delta_bytes=_maxrss_bytes() - rss0,
           peak_rss_delta_gib=(_maxrss_bytes() - rss0) / GIB)
  return t


def child_pcme_eval(p: dict) -> dict:
  """Official COCOEvaluator(eval_method='matching_prob').evaluate_recall on a query subset."""
  import numpy as np
  import torch
  loss_cls, eval_coco = _load_pcme(p['official_root'])
  torch.manual_seed(SEED)
  evaluator = eval_coco.COCOEvaluator(eval_method='matching_prob', extract_device='cpu',
                                      eval_device='cpu')
  evaluator.n_embeddings, evaluator.feat_size = p['n_samples'], p['dim']
  evaluator.set_criterion(loss_cls(PCME_CRITERION))
  rng = np.random.default_rng(SEED)
  n_img, n_cap, j, d = p['n_img'], p['n_cap'], p['n_samples'], p['dim']
  # extract_features stores features in np.zeros (float64) and returns them as torch
  # float64; captions are ordered 5 per image, classes are image ids.
  img = torch.from_numpy(rng.standard_normal((n_img, j, d)) * 0.05)
  cap = torch.from_numpy(rng.standard_normal((n_cap, j, d)) * 0.05)
  img_cls = torch.from_numpy(np.arange(n_img, dtype=np.float64))
  cap_cls = torch.from_numpy(np.repeat(np.arange(n_img, dtype=np.float64), n_cap // n_img))
  nq, bs = p['n_queries'], p['eval_batch_size']
  res = {}
  for name, (q, g, ql, gl) in {'i2t': (img, cap, img_cls, cap_cls),
                               't2i': (cap, img, cap_cls, img_cls)}.items():
    def run(n=nq):
      return evaluator.evaluate_recall(q[:n], g, ql[:n], gl, batch_size=bs)
    run(1)  # warm-up: one query
    t = _timed(run, 0, 1)
    per_q = t['median_s'] / nq
    total_q = len(q)
    t.update(n_queries_timed=nq, gallery=len(g), s_per_query=per_q,
             n_queries_full=total_q, extrapolated_full_s=per_q * total_q)
    res[name] = t
  one_fold = res['i2t']['extrapolated_full_s'] + res['t2i']['extrapolated_full_s']
  res['extrapolated_1k_test_s'] = one_fold
  res['extrapolated_1k_test_h'] = one_fold / 3600
  res['extrapolated_5fold_1k_s'] = 5 * one_fold
  res['peak_rss_bytes'] = _maxrss_bytes()
  res['note'] = (f'EXTRAPOLATED linearly: only {nq} image and {nq} caption queries were '
                 'timed; per-query cost is constant (each query scores the full gallery), '
                 'so full = per-query seconds x number of queries.')
  return res


CHILDREN = {'sgraf_score': child_sgraf_score, 'sgraf_train': child_sgraf_train,
            'pcme_loss': child_pcme_loss, 'pcme_eval': child_pcme_eval}


def _child_main(name: str, params_json: str, result_path: str) -> None:
  import torch
  p = json.loads(params_json)
  torch.set_num_threads(p.get('threads', NUM_THREADS))
  budget = p.get('mem_budget_bytes')
  if budget:
    # Guard the shared machine: fail with an allocation error instead of OOM-killing
    # other people's processes.
    limit = _proc_status_bytes('VmSize') + int(budget)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  result = {'load_avg_start': os.getloadavg()}
  t0 = time.perf_counter()
  with torch.no_grad() if name in ('sgraf_score', 'pcme_eval') else contextlib.nullcontext():
    result.update(CHILDREN[name](p))
  result.update(load_avg_end=os.getloadavg(), child_wall_s=time.perf_counter() - t0,
                torch_num_threads=torch.get_num_threads())
  with open(result_path, 'w') as f:
    json.dump(result, f)


# ---------------------------------------------------------------------------- parent


def run_child(name: str, params: dict, timeout_s: float) -> dict:
  """Runs one measurement in a fresh interpreter; returns its result or the error."""
  with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
    result_path = f.name
  cmd = [sys.executable, os.path.abspath(__file__), '--child', name,
         '--child-params', json.dumps(params), '--child-result', result_path]
  print(f'[official_bench] {name} {params.get("label", "")} ...', file=sys.stderr,
        flush=True)
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    with open(result_path) as f:
      out = json.load(f) if proc.returncode == 0 else None
    if out is None:
      out = {'error': f'exit code {proc.returncode}', 'stderr_tail': proc.stderr[-3000:]}
  except subprocess.TimeoutExpired:
    out = {'error': f'timed out after {timeout_s} s'}
  except (OSError, json.JSONDecodeError) as e:
    out = {'error': repr(e)}
  finally:
    if os.path.exists(result_path):
      os.unlink(result_path)
  out['wall_s'] = time.perf_counter() - t0
  out['params'] = params
  print(f'[official_bench]   -> {json.dumps({k: v for k, v in out.items() if k != "params"})[:400]}',
        file=sys.stderr, flush=True)
  return out


SGRAF_FNS = {
    'score': 'SGRAF/evaluation.py shard_attn_scores(model, img_embs, cap_embs, cap_lens, '
             'opt, shard_size) -> SGRAF.forward_sim -> EncoderSimilarity.forward '
             '(per-caption Python loop), model.val_start(), under torch.no_grad()',
    'train': 'SGRAF/model.py SGRAF.train_emb(images, captions, lengths): EncoderImage '
             '(precomp FC) + EncoderText (bi-GRU) + EncoderSimilarity + ContrastiveLoss('
             'margin=0.2, max_violation=True) + backward + clip_grad_norm_(2) + Adam',
}


def bench_sgraf(args, root: str) -> dict:
  out = {'function': SGRAF_FNS, 'shapes': SGRAF_SHAPES,
         'caption_len_range': CAPTION_LEN_RANGE, 'score': {}, 'train_step': {}}
  n = args.sgraf_pairs_side
  for threads in [NUM_THREADS] + args.extra_threads:
    suffix = '' if threads == NUM_THREADS else f'_{threads}thread'
    for shape in ('paper', 'small'):
      for module in ('SGR', 'SAF'):
        params = dict(official_root=root, shape=shape, module=module, n_img=n, n_cap=n,
                      shard_size=100, warmup=1, repeats=2 if shape == 'paper' else 3,
                      threads=threads, label=f'{module} {shape} {threads} thr')
        out['score'][f'{module}_{shape}{suffix}'] = run_child('sgraf_score', params, 400)
    for shape, reps in (('paper', args.sgraf_train_repeats), ('small', 2)):
      params = dict(official_root=root, shape=shape, module='SGR', batch=128, warmup=1,
                    repeats=reps, threads=threads, label=f'train SGR {shape} {threads} thr',
                    mem_budget_bytes=max(_mem_available_bytes() - 3 * GIB, 2 * GIB))
      out['train_step'][f'SGR_{shape}{suffix}'] = run_child('sgraf_train', params, 500)
  return out


def bench_pcme(args, root: str) -> dict:
  fn_loss = ('pcme/criterions/probemb.py MCSoftContrastiveLoss(config).forward('
             'image_features, caption_features, image_logsigma, caption_logsigma) + '
             'loss.backward(); config = pcme_coco.yaml criterion (shift 15, scale 15, '
             'J=7, vib_beta 1e-5)')
  fn_eval = ("pcme/engine/eval_coco.py COCOEvaluator(eval_method='matching_prob')."
             'evaluate_recall(q, g, q_labels, g_labels, batch_size=8) -> '
             'MatchingProbModule (Python loop over queries) -> '
             'MCSoftContrastiveLoss.match_prob; features float64 as extract_features '
             'returns them; batch_size 8 = pcme_coco.yaml eval_batch_size')
  out = {'loss': {'function': fn_loss, 'runs': {}},
         'eval': {'function': fn_eval}}
  j, d = 7, 1024
  small_b = args.pcme_small_batch
  runs = out['loss']['runs']
  runs[f'B{small_b}'] = run_child('pcme_loss', dict(
      official_root=root, batch=small_b, n_samples=j, dim=d, warmup=1, repeats=2,
      label=f'B={small_b}', mem_budget_bytes=max(_mem_available_bytes() - 3 * GIB, GIB)),
      400)
  small = runs[f'B{small_b}']
  scale = (128 / small_b) ** 2
  predicted = small.get('peak_rss_delta_bytes', 0) * scale
  avail = _mem_available_bytes()
  out['loss']['scaling'] = (
      'memory and time of the official loss scale as B^2 * J^2 * D (it materialises '
      'the (B*B, J, J, D) difference tensor for i2t and t2i); predicted B=128 from '
      f'B={small_b}: x{scale:g}')
  out['loss']['predicted_B128_peak_rss_delta_gib'] = predicted / GIB
  out['loss']['predicted_B128_s'] = small.get('median_s', float('nan')) * scale
  out['loss']['mem_available_gib_before_B128'] = avail / GIB
  want = args.pcme_b128
  if want == 'yes' or (want == 'auto' and predicted > 0 and
                       avail >= predicted + 3 * GIB):
    runs['B128'] = run_child('pcme_loss', dict(
        official_root=root, batch=128, n_samples=j, dim=d, warmup=0, repeats=1,
        label='B=128 (no warm-up, 1 run)', mem_budget_bytes=max(avail - 2 * GIB, GIB)),
        300)
  else:
    runs['B128'] = {'skipped': f'MemAvailable {avail / GIB:.1f} GiB < predicted '
                               f'{predicted / GIB:.1f} GiB + 3 GiB margin (or --pcme-b128 no)'}
  out['eval']['subset'] = run_child('pcme_eval', dict(
      official_root=root, n_img=1000, n_cap=5000, n_samples=j, dim=d,
      n_queries=args.pcme_eval_queries, eval_batch_size=8, label='matching_prob eval',
      mem_budget_bytes=max(_mem_available_bytes() - 3 * GIB, 2 * GIB)), 600)
  return out


ISSUE_REFERENCE = {
    'sgraf_SGR_paper_pairs_per_s': 3500, 'sgraf_SGR_small_pairs_per_s': 18000,
    'sgraf_train_step_paper_s': 18.0, 'sgraf_train_step_small_s': 2.7,
    'pcme_loss_B128_s': 34.0, 'pcme_loss_B128_peak_gib': 16.0,
    'pcme_matching_prob_eval_1k_h': 1.0,
}


def _summary(res: dict) -> dict:
  s = {}
  sg = res.get('sgraf', {})
  for k, v in sg.get('score', {}).items():
    s[f'sgraf_{k}_pairs_per_s'] = v.get('pairs_per_s')
  for k, v in sg.get('train_step', {}).items():
    s[f'sgraf_train_{k}_s_per_step'] = v.get('median_s')
  pc = res.get('pcme', {})
  for k, v in pc.get('loss', {}).get('runs', {}).items():
    s[f'pcme_loss_{k}_s'] = v.get('median_s')
    s[f'pcme_loss_{k}_peak_rss_delta_gib'] = v.get('peak_rss_delta_gib')
  ev = pc.get('eval', {}).get('subset', {})
  s['pcme_eval_1k_extrapolated_h'] = ev.get('extrapolated_1k_test_h')
  return s


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--official-root', default='/work/official')
  ap.add_argument('--out', default='official_bench.json')
  ap.add_argument('--only', choices=('all', 'sgraf', 'pcme'), default='all')
  ap.add_argument('--sgraf-pairs-side', type=int, default=100,
                  help='images = captions = this many for the scoring benchmark')
  ap.add_argument('--sgraf-train-repeats', type=int, default=1)
  ap.add_argument('--extra-threads', type=lambda v: [int(x) for x in v.split(',') if x],
                  default=[1], help='SGRAF also measured at these thread counts '
                  '(comma list; "" for none): on a loaded 2-core box, 2 OpenMP threads '
                  'can be far slower than 1')
  ap.add_argument('--pcme-small-batch', type=int, default=64)
  ap.add_argument('--pcme-b128', choices=('auto', 'yes', 'no'), default='auto')
  ap.add_argument('--pcme-eval-queries', type=int, default=20)
  ap.add_argument('--child', choices=sorted(CHILDREN), help=argparse.SUPPRESS)
  ap.add_argument('--child-params', help=argparse.SUPPRESS)
  ap.add_argument('--child-result', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    _child_main(args.child, args.child_params, args.child_result)
    return
  import torch
  root = os.path.abspath(args.official_root)
  commits = {}
  for repo in ('SGRAF', 'pcme'):
    path = os.path.join(root, repo, 'COMMIT')
    commits[repo] = open(path).read().strip() if os.path.exists(path) else None
  res = {'torch_version': torch.__version__, 'num_threads': NUM_THREADS,
         'dtype': 'float32 (PCME eval: float64 features, as the official code)',
         'machine': _machine_info(), 'load_avg_start': os.getloadavg(),
         'mem_available_gib_start': _mem_available_bytes() / GIB,
         'official_root': root, 'official_commits': commits,
         'runtime_patches': RUNTIME_PATCHES, 'issue_reference': ISSUE_REFERENCE,
         'started_unix': time.time()}
  t0 = time.perf_counter()
  if args.only in ('all', 'sgraf'):
    res['sgraf'] = bench_sgraf(args, root)
  if args.only in ('all', 'pcme'):
    res['pcme'] = bench_pcme(args, root)
  res.update(load_avg_end=os.getloadavg(), total_wall_s=time.perf_counter() - t0,
             summary=_summary(res))
  with open(args.out, 'w') as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res['summary'], indent=1))


if __name__ == '__main__':
  main()
