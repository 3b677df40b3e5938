"""Docs: every public object is documented, the narrative examples run, the Sphinx build passes.

The full Sphinx build (``-W``: warnings are errors, every reference must resolve) is the slow
test; the docstring coverage and the code examples are checked quickly and separately so a
failure names the object or page directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import adjoint_docs  # noqa: E402

sphinx = pytest.importorskip("sphinx", reason="the [docs] extra is not installed")


def _python_blocks(path: Path) -> list[str]:
    """The ```python fenced blocks of a MyST page (``{code-block}`` and others are not run)."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


DOC_PAGES = sorted(p for p in DOCS.rglob("*.md")
                   if "_build" not in p.parts and "_generated" not in p.parts)
PAGES_WITH_CODE = [p for p in DOC_PAGES if _python_blocks(p)]


def test_packages_discovered_include_every_plugin():
    found = dict(adjoint_docs.discover_packages())
    assert found["adjoint-core"] == "adjoint_core"
    for init in ROOT.glob("plugins/*/src/*/__init__.py"):
        assert found[init.parents[2].name] == init.parent.name


def test_every_public_object_is_documented():
    from sphinx.ext.autodoc.mock import mock

    names = [p for _, p in adjoint_docs.discover_packages()]
    with mock(adjoint_docs.missing_optional_modules()):
        missing = adjoint_docs.undocumented(names)
    assert missing == [], "public objects without documentation:\n  " + "\n  ".join(missing)


def test_undocumented_check_catches_a_missing_docstring(tmp_path, monkeypatch):
    pkg = tmp_path / "docs_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""Probe."""\nfrom .mod import Good, bad\n__all__ = ["Good", "bad", "LIMIT"]\n'
        "LIMIT = 3\n")
    (pkg / "mod.py").write_text(
        '"""Probe module."""\n__all__ = ["Good", "bad"]\n\n'
        'class Good:\n    """Documented."""\n\n    def method(self):\n        return 1\n\n'
        "def bad():\n    return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = adjoint_docs.undocumented(["docs_probe_pkg"])
    assert missing == ["docs_probe_pkg.LIMIT", "docs_probe_pkg.mod.Good.method",
                       "docs_probe_pkg.mod.bad"]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_code_blocks_run(page, tmp_path, monkeypatch):
    """Run a page's ```python blocks in order, in one namespace, in a scratch directory."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    torch.set_num_threads(1)
    namespace = {"__name__": "__docs__", "DOCS_ROOT": str(DOCS)}
    for i, block in enumerate(_python_blocks(page)):
        code = compile(block, f"{page.relative_to(DOCS)}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102


def test_narrative_pages_have_runnable_examples():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES_WITH_CODE}
    for page in ("quickstart.md", "state-spaces.md", "tutorials/compose-in-python.md",
                 "tutorials/write-your-own-energy.md"):
        assert page in names


def test_cli_help_lists_every_command():
    texts = dict(adjoint_docs.cli_help_texts())
    for command in ("train", "sample", "evaluate", "plugins", "info"):
        assert f"adjoint-core {command}" in texts
        assert texts[f"adjoint-core {command}"].startswith(f"usage: adjoint-core {command}")


@pytest.mark.slow
def test_sphinx_build_passes_with_warnings_as_errors(tmp_path):
    """``make docs`` in a scratch output directory: a fresh build, no network."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "sphinx build failed:\n" + "\n".join(warnings or
                                                                     [proc.stderr[-3000:]])
    html = tmp_path / "html"
    for page in ("index.html", "quickstart.html", "algorithm.html", "state-spaces.html",
                 "cli.html", "benchmarks.html", "tutorials/write-your-own-energy.html",
                 "tutorials/compose-in-python.html", "conventions.html", "api/index.html",
                 "architecture.html", "changelog.html", "api/_generated/adjoint_core.html"):
        assert (html / page).is_file(), page
    assert "furo" in (html / "index.html").read_text()  # the maintained theme, not the default
    for _, package in adjoint_docs.discover_packages():
        assert (html / "api" / "_generated" / f"{package}.html").is_file(), package
    api = (html / "api" / "_generated" / "adjoint_core.training.trainer.html").read_text()
    assert "AdjointSampler" in api
    assert "https://docs.pytorch.org/docs/stable/tensors.html#torch.Tensor" in api  # intersphinx
