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


def _timed(fn: Callable[[], Any], repeats: int, budget_s: float,
           report: Callable[[dict], None] | None = None) -> dict:
  """Times fn up to `repeats` times, stopping early once `budget_s` is spent (>= 1 run).

  Records wall and process CPU seconds (all threads) of each run; reports the partial
  result after every run so that a parent that kills us on timeout still gets it.
  """
  times, cpu = [], []
  start = time.perf_counter()
  res = {}
  for _ in range(repeats):
    if report and not times:  # lets the parent bound a first run it had to kill
      report({'timed_run_started_unix': time.time()})
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    res = {'median_s': statistics.median(times), 'times_s': times, 'cpu_s': cpu,
           'repeats_requested': repeats, 'repeats_done': len(times)}
    if report:
      report(res)
    if time.perf_counter() - start > budget_s:
      break
  return res


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


def child_sgraf_score(p: dict, report: Callable[[dict], None]) -> dict:
  """pairs/s of official evaluation.shard_attn_scores -> SGRAF.forward_sim."""
  import numpy as np
  import torch
  model_mod, evaluation = _load_sgraf(p['official_root'])
  shape = SGRAF_SHAPES[p['shape']]
  torch.manual_seed(SEED)
  opt = _sgraf_opt(shape, p['module'])
  model = _build_sgraf(model_mod, opt, shape['n_regions'])
  model.val_start()
  img, cap, lens = _sgraf_embeddings(np.random.default_rng(SEED), p['n_img'], p['n_cap'],
                                     shape)
  pairs = p['n_img'] * p['n_cap']
  sims = {}

  def run(n_cap=p['n_cap']):
    with contextlib.redirect_stdout(sys.stderr):  # it prints a '\r>>' progress line
      sims['v'] = evaluation.shard_attn_scores(model, img, cap[:n_cap], lens[:n_cap], opt,
                                               shard_size=p['shard_size'])

  def derived(t):
    t = {**t, 'pairs': pairs, 'caption_lengths_mean': float(np.mean(lens))}
    if 'median_s' in t:  # absent in the heartbeat sent before the first timed run
      t.update(pairs_per_s=pairs / t['median_s'],
               pairs_per_cpu_s=pairs / statistics.median(t['cpu_s']))
    return t

  run(p['warmup_captions'])  # warm-up on a few captions (allocator, OpenMP pool)
  t = _timed(run, p['repeats'], p['budget_s'], lambda t: report(derived(t)))
  assert sims['v'].shape == (p['n_img'], p['n_cap']) and np.isfinite(sims['v']).all()
  return derived(t)


def _sgraf_batch(rng, b: int, shape: dict):
  """Random precomp regions and token ids, sorted longest caption first like collate_fn."""
  import numpy as np
  import torch
  images = torch.from_numpy(
      rng.standard_normal((b, shape['n_regions'], shape['img_dim'])).astype(np.float32))
  # pack_padded_sequence (enforce_sorted) needs the official collate_fn's ordering.
  lens = sorted(_caption_lengths(rng, b), reverse=True)
  captions = torch.zeros(b, max(lens), dtype=torch.long)
  for i, n in enumerate(lens):
    captions[i, :n] = torch.from_numpy(rng.integers(1, shape['vocab_size'], size=n))
  return images, captions, lens


def child_sgraf_train(p: dict, report: Callable[[dict], None]) -> dict:
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
  # Warm-up: one step on a small batch (creates Adam state, allocator, OpenMP pool).
  model.train_emb(*_sgraf_batch(rng, p['warmup_batch'], shape))
  batch = _sgraf_batch(rng, p['batch'], shape)
  rss0 = _maxrss_bytes()

  def derived(t):
    return {**t, 'last_loss': float(model.logger.meters['Loss'].val),
            'peak_rss_bytes': _maxrss_bytes(), 'peak_rss_delta_bytes': _maxrss_bytes() - rss0}

  t = _timed(lambda: model.train_emb(*batch), p['repeats'], p['budget_s'],
             lambda t: report(derived(t)))
  assert np.isfinite(model.logger.meters['Loss'].val)
  return derived(t)


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


def child_pcme_loss(p: dict, report: Callable[[dict], None]) -> dict:
  """Official MCSoftContrastiveLoss forward + backward; seconds and peak RSS."""
  import torch
  loss_cls, _ = _load_pcme(p['official_root'])
  j, d = p['n_samples'], p['dim']
  torch.manual_seed(SEED)
  criterion = loss_cls(PCME_CRITERION)

  def make_step(b):
    # Leaves standing for the sampled embeddings (B, J, D) and log-sigmas (B, D).
    xs = [torch.randn(b, j, d, requires_grad=True), torch.randn(b, j, d, requires_grad=True),
          torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)]

    def step():
      for x in xs:
        x.grad = None
      loss, loss_dict = criterion(*xs)
      loss.backward()
      out['loss'] = loss_dict['loss']
    return step

  out = {}
  make_step(p['warmup_batch'])()  # small warm-up, so the peak below is the B-sized run's
  step = make_step(p['batch'])
  rss0 = _maxrss_bytes()

  def derived(t):
    return {**t, 'loss': out.get('loss'), 'baseline_rss_bytes': rss0,
            'peak_rss_bytes': _maxrss_bytes(), 'peak_rss_delta_bytes': _maxrss_bytes() - rss0,
            'peak_rss_delta_gib': (_maxrss_bytes() - rss0) / GIB}

  t = _timed(step, p['repeats'], p['budget_s'], lambda t: report(derived(t)))
  return derived(t)


def child_pcme_eval(p: dict, report: Callable[[dict], None]) -> dict:
  """Official COCOEvaluator(eval_method='matching_prob').evaluate_recall on query subsets."""
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
  # extract_features keeps features in np.zeros (float64) and returns them as float64
  # tensors; captions come 5 per image and the classes are the image ids.
  img = torch.from_numpy(rng.standard_normal((n_img, j, d)) * 0.05)
  cap = torch.from_numpy(rng.standard_normal((n_cap, j, d)) * 0.05)
  img_cls = torch.from_numpy(np.arange(n_img, dtype=np.float64))
  cap_cls = torch.from_numpy(np.repeat(np.arange(n_img, dtype=np.float64), n_cap // n_img))
  res = {}
  for name, (q, g, ql, gl) in {'i2t': (img, cap, img_cls, cap_cls),
                               't2i': (cap, img, cap_cls, img_cls)}.items():
    res[name] = _time_queries(evaluator, q, g, ql, gl, p,
                              lambda r, name=name: report({**res, name: r}))
  one_fold = res['i2t']['extrapolated_full_s'] + res['t2i']['extrapolated_full_s']
  res.update(extrapolated_1k_test_s=one_fold, extrapolated_1k_test_h=one_fold / 3600,
             extrapolated_5fold_1k_s=5 * one_fold, peak_rss_bytes=_maxrss_bytes(),
             note='EXTRAPOLATED linearly from the timed query subsets (n_queries_timed); '
                  'each query scores the whole gallery, so the per-query cost is constant '
                  'and full time = seconds per query x number of queries (1,000 image '
                  'queries + 5,000 caption queries for one 1K fold).')
  return res


def _time_queries(evaluator, q, g, ql, gl, p: dict, report) -> dict:
  """Runs evaluate_recall over consecutive chunks of queries until n_queries or budget."""
  chunk, bs = p['query_chunk'], p['eval_batch_size']
  evaluator.evaluate_recall(q[:1], g, ql[:1], gl, batch_size=bs)  # warm-up: one query
  done, wall, cpu, start, r = 0, 0.0, 0.0, time.perf_counter(), {}
  while done < p['n_queries'] and (done == 0 or time.perf_counter() - start < p['budget_s']):
    sl = slice(done, min(done + chunk, p['n_queries']))
    t0, c0 = time.perf_counter(), time.process_time()
    evaluator.evaluate_recall(q[sl], g, ql[sl], gl, batch_size=bs)
    wall += time.perf_counter() - t0
    cpu += time.process_time() - c0
    done = sl.stop
    r = {'n_queries_timed': done, 'n_queries_requested': p['n_queries'], 'gallery': len(g),
         'timed_s': wall, 'cpu_s': cpu, 's_per_query': wall / done,
         'n_queries_full': len(q), 'extrapolated_full_s': wall / done * len(q)}
    report(r)
  return r


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
  head = {'load_avg_start': os.getloadavg(), 'mem_limit_bytes': budget}
  t0 = time.perf_counter()

  def write(partial: dict, final: bool = False) -> None:
    res = {**head, **partial, 'complete': final, 'load_avg_end': os.getloadavg(),
           'child_wall_s': time.perf_counter() - t0,
           'torch_num_threads': torch.get_num_threads()}
    with open(result_path + '.tmp', 'w') as f:
      json.dump(res, f)
    os.replace(result_path + '.tmp', result_path)  # the parent never reads a half file

  grad = torch.no_grad() if name in ('sgraf_score', 'pcme_eval') else contextlib.nullcontext()
  with grad:
    write(CHILDREN[name](p, write), final=True)


# ---------------------------------------------------------------------------- parent


def run_child(name: str, params: dict, timeout_s: float) -> dict:
  """Runs one measurement in a fresh interpreter; its result, partial result or error."""
  fd, result_path = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  os.unlink(result_path)
  cmd = [sys.executable, os.path.abspath(__file__), '--child', name,
         '--child-params', json.dumps(params), '--child-result', result_path]
  print(f'[official_bench] {name} {params.get("label", "")} (timeout {timeout_s:.0f} s)',
        file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  err = None
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if proc.returncode != 0:
      err = {'error': f'exit code {proc.returncode}', 'stderr_tail': proc.stderr[-3000:]}
  except subprocess.TimeoutExpired:
    err = {'error': f'timed out after {timeout_s:.0f} s (partial result kept if any)'}
  out = {}
  if os.path.exists(result_path):
    with open(result_path) as f:
      out = json.load(f)
    os.unlink(result_path)
  if err and 'median_s' not in out and 'timed_run_started_unix' in out:
    out['first_timed_run_lower_bound_s'] = time.time() - out['timed_run_started_unix']
  out.update(err or {}, wall_s=time.perf_counter() - t0, params=params)
  brief = {k: v for k, v in out.items() if k not in ('params', 'stderr_tail')}
  print(f'[official_bench]   -> {json.dumps(brief)[:500]}', file=sys.stderr, flush=True)
  if err and 'stderr_tail' in err:
    print(err['stderr_tail'][-1500:], file=sys.stderr, flush=True)
  return out


SGRAF_FNS = {
    'score': 'SGRAF/evaluation.py shard_attn_scores(model, img_embs, cap_embs, cap_lens, '
             'opt, shard_size) -> SGRAF.forward_sim -> EncoderSimilarity.forward '
             '(per-caption Python loop), model.val_start(), under torch.no_grad()',
    'train': 'SGRAF/model.py SGRAF.train_emb(images, captions, lengths): EncoderImage '
             '(precomp FC) + EncoderText (bi-GRU) + EncoderSimilarity + ContrastiveLoss('
             'margin=0.2, max_violation=True) + backward + clip_grad_norm_(2) + Adam',
}


class Deadline:
  """Global wall-clock budget: each child's timeout is capped by what is left."""

  def __init__(self, budget_s: float, on_result: Callable[[], None] = lambda: None):
    self.end = time.perf_counter() + budget_s
    self.on_result = on_result  # e.g. save the partial JSON after every measurement

  def left(self) -> float:
    return self.end - time.perf_counter()

  def run(self, name: str, params: dict, max_s: float, min_s: float = 20) -> dict:
    left = self.left()
    if left < min_s:
      return {'skipped': f'global --time-budget-s exhausted ({left:.0f} s left)',
              'params': params}
    out = run_child(name, params, min(max_s, left))
    self.on_result()
    return out


def _mem_budget(margin_gib: float = 3) -> int:
  return int(max(_mem_available_bytes() - margin_gib * GIB, 2 * GIB))


def sgraf_score_params(args, root, shape, module, threads) -> dict:
  return dict(official_root=root, shape=shape, module=module, n_img=args.sgraf_images,
              n_cap=args.sgraf_captions, shard_size=100, warmup_captions=4, repeats=3,
              budget_s=args.child_budget_s, threads=threads,
              label=f'{module} {shape} {threads} thread(s)')


def sgraf_train_params(args, root, shape, threads) -> dict:
  return dict(official_root=root, shape=shape, module='SGR', batch=128, warmup_batch=16,
              repeats=3, budget_s=args.child_budget_s, threads=threads,
              mem_budget_bytes=_mem_budget(), label=f'train SGR {shape} {threads} thread(s)')


PCME_LOSS_FN = ('pcme/criterions/probemb.py MCSoftContrastiveLoss(config).forward('
                'image_features, caption_features, image_logsigma, caption_logsigma) + '
                'loss.backward(); config = pcme_coco.yaml criterion (shift 15, scale 15, '
                'J=7, vib_beta 1e-5)')
PCME_EVAL_FN = ("pcme/engine/eval_coco.py COCOEvaluator(eval_method='matching_prob')."
                'evaluate_recall(q, g, q_labels, g_labels, batch_size=8) -> '
                'MatchingProbModule (Python loop over queries) -> '
                'MCSoftContrastiveLoss.match_prob; float64 features as extract_features '
                'returns them; batch_size 8 = pcme_coco.yaml eval_batch_size')


def pcme_loss(args, root, dl: Deadline, b: int, mem_budget: int) -> dict:
  return dl.run('pcme_loss', dict(
      official_root=root, batch=b, n_samples=7, dim=1024, warmup_batch=16, repeats=2,
      budget_s=args.child_budget_s, mem_budget_bytes=mem_budget, label=f'B={b}'), 600)


def pcme_b128(args, root, dl: Deadline, small: dict, small_b: int) -> tuple[dict, dict]:
  """Runs B=128 only if the B=small_b peak x (128/small_b)^2 fits in free memory."""
  scale = (128 / small_b) ** 2
  predicted = small.get('peak_rss_delta_bytes', 0) * scale
  avail = _mem_available_bytes()
  info = {'scaling': 'time and memory of the official loss grow as B^2 * J^2 * D: it '
                     'materialises a (B*B, J, J, D) difference tensor, for i2t and t2i',
          f'predicted_B128_from_B{small_b}_peak_rss_delta_gib': predicted / GIB,
          f'predicted_B128_from_B{small_b}_s': small.get('median_s', float('nan')) * scale,
          'mem_available_gib_before_B128': avail / GIB}
  fits = predicted > 0 and avail >= predicted + 3 * GIB
  if args.pcme_b128 == 'yes' or (args.pcme_b128 == 'auto' and fits):
    return pcme_loss(args, root, dl, 128, int(max(avail - 2 * GIB, GIB))), info
  return {'skipped': f'MemAvailable {avail / GIB:.1f} GiB < predicted peak '
                     f'{predicted / GIB:.1f} GiB + 3 GiB margin (or --pcme-b128 no)'}, info


def run_pcme(args, root: str, dl: Deadline, pc: dict) -> None:
  """PCME loss at B=small (and B=128 when memory allows) and the eval subset."""
  b = args.pcme_small_batch
  runs = pc['loss']['runs']
  runs[f'B{b}'] = pcme_loss(args, root, dl, b, _mem_budget())
  pc['eval']['subset'] = dl.run('pcme_eval', dict(
      official_root=root, n_img=1000, n_cap=5000, n_samples=7, dim=1024,
      n_queries=args.pcme_eval_queries, query_chunk=4, eval_batch_size=8,
      budget_s=args.child_budget_s, mem_budget_bytes=_mem_budget(),
      label='matching_prob eval subset'), 400)
  runs['B128'], info = pcme_b128(args, root, dl, runs[f'B{b}'], b)
  pc['loss'].update(info)


def run_all(args, root: str, res: dict, save: Callable[[], None]) -> None:
  """All measurements into res, most important first, within the global time budget."""
  dl = Deadline(args.time_budget_s, save)
  sg = {'function': SGRAF_FNS, 'shapes': SGRAF_SHAPES, 'caption_len_range': CAPTION_LEN_RANGE,
        'score': {}, 'train_step': {}}
  pc = {'loss': {'function': PCME_LOSS_FN, 'runs': {}}, 'eval': {'function': PCME_EVAL_FN}}
  do_sg, do_pc = args.only in ('all', 'sgraf'), args.only in ('all', 'pcme')
  res.update(sgraf=sg if do_sg else None, pcme=pc if do_pc else None)
  for threads in args.sgraf_threads if do_sg else []:
    sfx = '' if threads == NUM_THREADS else f'_{threads}thread'
    for shape in ('paper', 'small'):
      for module in ('SGR', 'SAF'):
        sg['score'][f'{module}_{shape}{sfx}'] = dl.run(
            'sgraf_score', sgraf_score_params(args, root, shape, module, threads), 300)
    if do_pc and not pc['loss']['runs']:  # PCME before the slow SGRAF training steps
      run_pcme(args, root, dl, pc)
    for shape in ('small', 'paper'):
      sg['train_step'][f'SGR_{shape}{sfx}'] = dl.run(
          'sgraf_train', sgraf_train_params(args, root, shape, threads), 600)
  if do_pc and not pc['loss']['runs']:
    run_pcme(args, root, dl, pc)


ISSUE_REFERENCE = {
    'sgraf_SGR_paper_pairs_per_s': 3500, 'sgraf_SGR_small_pairs_per_s': 18000,
    'sgraf_train_step_paper_s': 18.0, 'sgraf_train_step_small_s': 2.7,
    'pcme_loss_B128_s': 34.0, 'pcme_loss_B128_peak_gib': 16.0,
    'pcme_matching_prob_eval_1k_h': 1.0,
}


def _summary(res: dict) -> dict:
  """The headline numbers, next to what the issue reported."""
  s = {}
  sg = res.get('sgraf') or {}
  for k, v in sg.get('score', {}).items():
    s[f'sgraf_score_{k}_pairs_per_s'] = v.get('pairs_per_s')
  for k, v in sg.get('train_step', {}).items():
    s[f'sgraf_train_{k}_s_per_step'] = v.get('median_s')
  pc = res.get('pcme') or {}
  for k, v in pc.get('loss', {}).get('runs', {}).items():
    s[f'pcme_loss_{k}_s'] = v.get('median_s')
    s[f'pcme_loss_{k}_peak_rss_delta_gib'] = v.get('peak_rss_delta_gib')
  ev = pc.get('eval', {}).get('subset', {})
  s['pcme_eval_1k_EXTRAPOLATED_h'] = ev.get('extrapolated_1k_test_h')
  s['issue_reference'] = ISSUE_REFERENCE
  return s


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--official-root', default='/work/official')
  ap.add_argument('--out', default='official_bench.json')
  ap.add_argument('--only', choices=('all', 'sgraf', 'pcme'), default='all')
  ap.add_argument('--time-budget-s', type=float, default=1200,
                  help='global wall-clock budget; measurements past it are skipped '
                  '(they run most important first)')
  ap.add_argument('--child-budget-s', type=float, default=30,
                  help='a measurement stops repeating once this much time is spent '
                  '(always at least one timed run)')
  ap.add_argument('--sgraf-images', type=int, default=100,
                  help='images in the scoring grid (= the official shard_size)')
  ap.add_argument('--sgraf-captions', type=int, default=50)
  ap.add_argument('--sgraf-threads', type=lambda v: [int(x) for x in v.split(',') if x],
                  default=[NUM_THREADS, 1], help='thread counts for SGRAF, in order '
                  '(comma list; keys get a _<n>thread suffix unless n == 2): on a loaded '
                  '2-core box, 2 OpenMP threads can be far slower than 1')
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

  def save(final: bool = False) -> None:
    res.update(complete=final, load_avg_end=os.getloadavg(),
               total_wall_s=time.perf_counter() - t0, summary=_summary(res))
    with open(args.out + '.tmp', 'w') as f:
      json.dump(res, f, indent=1)
    os.replace(args.out + '.tmp', args.out)

  run_all(args, root, res, save)
  save(final=True)
  print(json.dumps(res['summary'], indent=1))


if __name__ == '__main__':
  main()
