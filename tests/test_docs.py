"""The docs stay true to the code: every config key is documented, every link resolves, and the code
passes the linter and formatter configured in pyproject.toml."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from fitnets_jax import config, methods
from fitnets_jax.methods import shared

from conftest import ROOT


def documented_keys():
  text = open(os.path.join(ROOT, "docs", "configuration.md")).read()
  return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))


def test_every_config_key_is_documented_with_its_default():
  keys = set()
  for key in config.flatten(config.base_config().to_dict()):
    stage_key = re.match(r"stages\.(teacher|hint|student)\.(.*)", key)
    keys.add(f"stages.<stage>.{stage_key.group(2)}" if stage_key else key)
  keys |= {k for k, v in config.base_config().items() if isinstance(v, list)}
  documented = documented_keys()
  assert not keys - documented, f"undocumented keys: {sorted(keys - documented)}"
  assert not documented - keys, f"documented keys that do not exist: {sorted(documented - keys)}"
  text = open(os.path.join(ROOT, "docs", "configuration.md")).read()
  owners = [(name, method.defaults()) for name, method in methods.methods().items()] + [("shared", shared.defaults())]
  for name, sections in owners:  # each section is documented as its owner's
    for section in sections:
      assert re.search(rf"^\| `{section}[.`].*\| `{name}` \|$", text, flags=re.M), (name, section)


def test_every_relative_link_in_the_readme_and_docs_resolves():
  pages = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]
  for page in pages:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(page).read()):
      if target.startswith(("http://", "https://")):
        continue
      assert os.path.exists(os.path.join(os.path.dirname(page), target)), f"{os.path.relpath(page, ROOT)}: {target}"


def test_the_readme_stays_short_and_cites_only_files_that_exist():
  text = open(os.path.join(ROOT, "README.md")).read()
  assert len(text.splitlines()) <= 220
  for path in re.findall(r"`((?:fitnets_jax|configs|docs|tests|notebooks|benchmarks)/[\w./]+)`", text):
    assert os.path.exists(os.path.join(ROOT, path.rstrip("/"))), path


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]])
def test_the_code_passes_ruff(check):
  ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
  assert ruff, "ruff is missing: pip install -r requirements.txt (it pins the version the code is checked with)"
  result = subprocess.run([ruff, *check, "."], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_module_map_names_every_module_of_the_package():
  text = open(os.path.join(ROOT, "docs", "how-it-works.md")).read()
  package = os.path.join(ROOT, "fitnets_jax")
  modules = [
    os.path.relpath(path, package)
    for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True)
    if not path.endswith("__init__.py") and "configs" not in path
  ]
  missing = [m for m in modules if os.path.basename(m) not in text]
  assert modules and not missing, f"docs/how-it-works.md's module map omits {missing}"


def test_the_testing_page_lists_every_test_file():
  text = open(os.path.join(ROOT, "docs", "testing.md")).read()
  listed = set(re.findall(r"^\| `(test_\w+\.py)` \|", text, flags=re.M))
  present = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))}
  assert listed == present, (sorted(present - listed), sorted(listed - present))
