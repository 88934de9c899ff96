"""Import structure of ``xmr_jax.data``: no cycles, and CUB's reader stays free of TFDS.

The graph is read from the source with ``ast``, so imports inside functions count as much as
module-level ones (a lazy import still makes a two-way dependency).
"""
import ast
import os
import subprocess
import sys
from typing import Dict, Set

import pytest

import xmr_jax.data

DATA_DIR = os.path.dirname(xmr_jax.data.__file__)


def _module_files() -> Dict[str, str]:
  """{dotted module name: path} for every .py file under xmr_jax/data."""
  out = {}
  for root, _, files in os.walk(DATA_DIR):
    for name in files:
      if name.endswith(".py") and name != "__main__.py":
        rel = os.path.relpath(os.path.join(root, name), os.path.dirname(DATA_DIR))
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(["xmr_jax"] + parts)] = os.path.join(root, name)
  return out


def _imports(path: str, known: Set[str]) -> Set[str]:
  """The xmr_jax.data modules ``path`` imports anywhere (module level or in functions)."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:   # `from pkg import sub` imports the submodule pkg.sub
        sub = f"{node.module}.{a.name}"
        found.add(sub if sub in known else node.module)
  return found & known


def import_graph() -> Dict[str, Set[str]]:
  files = _module_files()
  return {mod: _imports(path, set(files)) - {mod} for mod, path in files.items()}


def _find_cycle(graph: Dict[str, Set[str]]):
  """One cycle as a list of modules, or None (depth-first search with colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_graph_sees_the_cub_modules():
  graph = import_graph()
  assert "xmr_jax.data.cub" in graph["xmr_jax.data.tfds_cub.cub_captions"]
  assert {"xmr_jax.data.cub", "xmr_jax.data.tfds_cub"} <= graph["xmr_jax.data.cub_export"]


def test_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
  assert _find_cycle(graph) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_data_package():
  assert _find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", ["xmr_jax.data.cub", "xmr_jax.data.tfds_cub"])
def test_cub_is_imported_one_way(module):
  # A fresh interpreter: which modules each import really pulls in.
  code = (f"import sys, {module}; "
          "print(','.join(m for m in sys.modules if m.startswith(('xmr_jax.data', "
          "'tensorflow_datasets'))))")
  if module == "xmr_jax.data.tfds_cub":
    pytest.importorskip("tensorflow_datasets")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True).stdout.strip().split(",")
  if module == "xmr_jax.data.cub":
    assert not [m for m in out if m.startswith(("xmr_jax.data.tfds_cub", "tensorflow_datasets",
                                                "xmr_jax.data.cub_export"))]
  else:
    assert "xmr_jax.data.cub" in out and "xmr_jax.data.cub_export" not in out


def test_old_cub_cli_points_to_the_new_one():
  run = subprocess.run([sys.executable, "-m", "xmr_jax.data.cub", "--manual-dir", "x"],
                       capture_output=True, text=True)
  assert run.returncode != 0 and "python -m xmr_jax.data.cub_export" in run.stderr
