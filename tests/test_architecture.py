"""The architecture's rules (docs/architecture.md), checked on the source so a change that
breaks one fails here: forbidden imports between rooms, methods named outside ``models/``,
hidden report hooks, one trainer and one tiled scorer, function length and docstrings."""
import ast
import os
import pathlib
import subprocess
import sys
import textwrap


REPO = pathlib.Path(__file__).resolve().parent.parent
PKG = REPO / "xmr_jax"
METHOD_NAMES = {"vsepp", "defrag", "pcme", "sgraf", "mmca"}

# room -> module prefixes it must never import (docs/architecture.md, "The arrows").
FORBIDDEN = {
    "common": ("xmr_jax.",),
    "kernels": ("xmr_jax.training", "xmr_jax.models", "xmr_jax.losses", "xmr_jax.data",
                "xmr_jax.evaluation", "flax", "ml_collections", "configs"),
    "losses": ("xmr_jax.training", "xmr_jax.models", "xmr_jax.data", "xmr_jax.evaluation",
               "flax", "ml_collections"),
    "models": ("xmr_jax.training", "xmr_jax.evaluation", "xmr_jax.data"),
    "data": ("xmr_jax.training", "xmr_jax.models", "xmr_jax.evaluation"),
    "evaluation": ("xmr_jax.training", "xmr_jax.data"),
    # Search wires a restored workdir (training), the engine and the extractor together;
    # what it knows of a method is the Method object, never a model module.
    "search": ("xmr_jax.models", "xmr_jax.losses", "xmr_jax.kernels", "xmr_jax.backbones",
               "xmr_jax.main", "xmr_jax.convert"),
    # A pretrained image network and its weight reader: common/ and types.py only, so the
    # data room can import it without pulling in models or training.
    "backbones": ("xmr_jax.kernels", "xmr_jax.losses", "xmr_jax.models", "xmr_jax.data",
                  "xmr_jax.evaluation", "xmr_jax.training", "xmr_jax.plots",
                  "xmr_jax.config_utils", "xmr_jax.main", "xmr_jax.convert",
                  "ml_collections", "configs"),
}


def _sources(room=None):
  base = PKG / room if room else PKG
  return sorted(base.rglob("*.py"))


def _imports(path: pathlib.Path):
  """Every module a file imports, top-level or inside functions, as dotted names."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.lineno, node.module
      for alias in node.names:   # "from xmr_jax import training" imports xmr_jax.training
        yield node.lineno, f"{node.module}.{alias.name}"


def forbidden_imports(root: pathlib.Path = PKG):
  """(file:line, imported module) for every import that breaks a room's rule."""
  bad = []
  for room, prefixes in FORBIDDEN.items():
    for path in sorted((root / room).rglob("*.py")):
      for line, module in _imports(path):
        if any(module == p.rstrip(".") or module.startswith(p if p.endswith(".") else p + ".")
               or module == p for p in prefixes):
          if not module.startswith(f"xmr_jax.{room}"):
            bad.append((f"{path.relative_to(root.parent)}:{line}", module))
  return bad


def test_no_room_imports_what_it_must_not():
  assert forbidden_imports() == []


def test_the_import_check_catches_a_forbidden_import(tmp_path):
  # The checker itself must be able to fail: plant one bad import of each kind.
  root = tmp_path / "xmr_jax"
  for room, line in {"evaluation": "from xmr_jax.training import loop",
                     "kernels": "import flax.linen as nn",
                     "data": "def f():\n  from xmr_jax.models import registry",
                     "common": "from xmr_jax import types",
                     "backbones": "from xmr_jax.data import precomp",
                     "search": "from xmr_jax.kernels import common"}.items():
    (root / room).mkdir(parents=True)
    (root / room / "bad.py").write_text(line + "\n")
  found = {module for _, module in forbidden_imports(root)}
  assert {"xmr_jax.training", "flax.linen", "xmr_jax.models", "xmr_jax.types",
          "xmr_jax.data.precomp", "xmr_jax.kernels.common"} <= found


def _method_name_comparisons(path: pathlib.Path):
  """Comparisons against a method-name string (``x == "pcme"``, ``x in ("defrag", ...)``)."""
  hits = []
  for node in ast.walk(ast.parse(path.read_text())):
    if not isinstance(node, ast.Compare):
      continue
    for side in [node.left, *node.comparators]:
      consts = [side] if isinstance(side, ast.Constant) else \
          list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else []
      if any(isinstance(c, ast.Constant) and c.value in METHOD_NAMES for c in consts):
        hits.append(f"{path.relative_to(REPO)}:{node.lineno}")
  return hits


def test_nothing_outside_models_names_a_method():
  hits = []
  for path in _sources():
    if path.is_relative_to(PKG / "models"):
      continue
    hits += _method_name_comparisons(path)
    text = path.read_text()
    for needle in ("method.name ==", "config.method ==", ".method == "):
      if needle in text:
        hits.append(f"{path.relative_to(REPO)}: {needle}")
  assert hits == []


def test_no_hidden_report_hooks():
  # Reports are evaluators declared in config.evals, not modules found by name.
  for room in ("evaluation", "training"):
    for path in _sources(room):
      tree = ast.parse(path.read_text())
      calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Name)}
      assert "hasattr" not in calls, path
      assert not any(m.startswith("importlib") for _, m in _imports(path)), path


def _definitions(name: str):
  """Files defining a module-level function (or a nested one) called ``name``; methods of
  classes (e.g. a tokenizer's ``train``) are other things and do not count."""
  out = []
  for p in _sources():
    tree = ast.parse(p.read_text())
    methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
    out += [f"{p.relative_to(REPO)}" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name == name and id(n) not in methods]
  return out


def test_one_training_loop_and_one_tiled_scorer():
  assert _definitions("train") == ["xmr_jax/training/loop.py"]
  assert _definitions("score_all") == ["xmr_jax/evaluation/engine.py"]
  # The removed second copies stay removed.
  for gone in ("_train_loop", "score_all_sharded", "loss_and_aux", "_pad_rows"):
    assert _definitions(gone) == [], gone


def test_functions_are_short_and_public_api_is_documented():
  long, undocumented = [], []
  for path in _sources():
    tree = ast.parse(path.read_text())
    rel = path.relative_to(REPO)
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if node.end_lineno - node.lineno + 1 > 60:
          long.append(f"{rel}:{node.name}")
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
        if not ast.get_docstring(node):
          undocumented.append(f"{rel}:{node.name}")
      if isinstance(node, ast.ClassDef):
        for sub in node.body:
          # Flax's ``setup`` is a framework hook, not API.
          if (isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_")
              and sub.name != "setup" and not ast.get_docstring(sub)):
            undocumented.append(f"{rel}:{node.name}.{sub.name}")
  assert long == [], "functions over 60 lines"
  assert undocumented == [], "public API without a docstring"


def test_architecture_document_names_every_room():
  doc = (REPO / "docs" / "architecture.md").read_text()
  rooms = [p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
  for room in rooms:
    assert f"{room}/" in doc, f"docs/architecture.md does not describe xmr_jax/{room}/"
  readme = (REPO / "README.md").read_text()
  # The design lives in the repository, not in a file beside it.
  assert "docs/architecture.md" in readme and "DESIGN.md" not in readme


_LOAD_SWEEP = textwrap.dedent("""
    import sys
    from ml_collections import config_flags
    import xmr_jax
    assert "site-packages" in xmr_jax.__file__ or {target!r} in xmr_jax.__file__, xmr_jax.__file__
    from xmr_jax.config_utils import load_config
    c = load_config({sweep!r}, "runlocal")
    print("OK", c.method, len(c.sweep.variants), xmr_jax.__file__)
""")


def test_sweep_files_load_from_a_non_editable_install(tmp_path):
  """Build a wheel, install it into a temporary directory and load a sweep file's config from
  another working directory: the base config is found relative to the sweep file."""
  wheels, target = tmp_path / "wheels", tmp_path / "site"
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(wheels), str(REPO)], capture_output=True, text=True)
  assert build.returncode == 0, build.stderr[-3000:]
  wheel = next(wheels.glob("xmr_jax-*.whl"))
  inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                         "--target", str(target), str(wheel)], capture_output=True, text=True)
  assert inst.returncode == 0, inst.stderr[-3000:]
  sweep = str(REPO / "experiments" / "sweeps" / "vsepp_margin_seed.py")
  # Only the installed copy on the path: the checkout is not importable from tmp_path.
  env = dict(os.environ, PYTHONPATH=str(target), PYTHONNOUSERSITE="1")
  out = subprocess.run([sys.executable, "-I", "-c", _LOAD_SWEEP.format(
      target=str(target), sweep=sweep).replace("import sys\n", f"import sys\nsys.path.insert(0, {str(target)!r})\n")],
      cwd=str(tmp_path), capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("OK vsepp 6") and str(target) in out.stdout
