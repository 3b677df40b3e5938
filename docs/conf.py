"""Sphinx configuration of the adjoint-core documentation.

Build with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``):
warnings are errors, every cross-reference must resolve (``nitpicky``), and an undocumented
public object of the core or of any plugin fails the build (see ``_ext/adjoint_docs.py``).
The build needs no network: the intersphinx inventories of torch, numpy and Python are
committed under ``_inventories/`` (regenerate with ``_inventories/make_inventories.py``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import adjoint_docs  # noqa: E402

import adjoint_core  # noqa: E402

# sphinx-autodoc-typehints calls a Sphinx API deprecated for Sphinx 10 (their warning, not ours)
warnings.filterwarnings("ignore", message=r".*sphinx_autodoc_typehints.*is deprecated")

project = "adjoint-core"
author = "adjoint-core developers"
copyright = "2026, adjoint-core developers"  # noqa: A001
release = adjoint_core.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_parser",
    "adjoint_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# -- strictness: every reference must resolve --------------------------------------------
nitpicky = True

# Optional heavy dependencies of plugins that are not installed here are mocked.
autodoc_mock_imports = adjoint_docs.missing_optional_modules()

# Third-party projects without an offline inventory: their names in signatures stay plain
# text (a reference to one of *our* objects that does not resolve is still an error).
_NO_INVENTORY = ["pydantic", "pydantic_core", "pluggy", "tqdm", "matplotlib", "scipy", "ot",
                 "yaml", "rdkit", "torch_geometric", "fairchem", "tblite", "e3nn", "ase",
                 *autodoc_mock_imports]
nitpick_ignore_regex = [(r"py:.*", rf"{re_mod}(\..*)?") for re_mod in _NO_INVENTORY] + [
    # private classes of the standard library and torch that appear in signatures
    (r"py:.*", r"argparse\._.*"),
    (r"py:.*", r"torch\._.*"),
    (r"py:.*", r"torch\.types\..*"),
    # public torch classes missing from the offline torch inventory
    (r"py:.*", r"torch\.optim\.swa_utils\..*"),
]

# -- autodoc / napoleon / type hints ------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
typehints_use_signature = False
typehints_use_signature_return = False
always_document_param_types = False
typehints_document_rtype = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
autosummary_generate = False

# -- intersphinx: local inventories, links point at the official documentation ---------------
_INV = HERE / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(_INV / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(_INV / "torch.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
}
intersphinx_timeout = 1

# -- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- HTML ------------------------------------------------------------------------------------
# furo (https://pradyunsg.me/furo/): a maintained theme with a readable content width, code
# blocks that scroll instead of overflowing, and a light/dark mode.
html_theme = "furo"
html_title = f"adjoint-core {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}
