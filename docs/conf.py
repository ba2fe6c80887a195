"""Sphinx configuration of the xlatda documentation.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The gallery is made from ``examples/*.py``. By default the examples are not
run (the pages show their code only, and CI's build stays short). To run them
and show their output, set ``XLATDA_DOCS_RUN_EXAMPLES=1`` (add
``XLATDA_QUICK=1`` for the tiny sizes the test suite uses), or set it to a
regular expression of the examples to run (``XLATDA_DOCS_RUN_EXAMPLES=sinr``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import sphinx_autosummary_accessors

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import xlatda  # noqa: E402  (registers the .lda accessor that the API pages document)

# -- project ---------------------------------------------------------------
project = "xlatda"
author = "the xlatda developers"
copyright = "the xlatda developers"
release = xlatda.__version__
version = ".".join(release.split(".")[:2])

# -- extensions --------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_autosummary_accessors",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# Cross-references that find no target (xarray, torch and numpy types in
# signatures: there is no intersphinx, the build must work offline) stay plain
# text instead of warning.
nitpicky = False

# -- autodoc / autosummary / numpydoc ------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
numpydoc_show_class_members = False  # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# -- MyST ----------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- gallery ---------------------------------------------------------------------
# The examples stay plain scripts (tests/test_examples.py runs them); their
# docstrings start with a one-line summary, not a reST title. They are copied
# into the build tree, given a title and a gallery header there, and the
# gallery is made from the copies.
_RUN = os.environ.get("XLATDA_DOCS_RUN_EXAMPLES", "")
RUN_EXAMPLES = _RUN not in ("", "0")
# "1" runs every example; any other value is a regular expression of the
# file names to run, e.g. XLATDA_DOCS_RUN_EXAMPLES="sinr|vaevar".
RUN_PATTERN = r".*\.py" if _RUN in ("1", "all") else rf".*({_RUN}).*\.py"
GALLERY_SRC = DOCS / "_build" / "gallery_src"

_HEADER = """\
Examples
========

Scripts in the repository's ``examples/`` folder. Each runs as is
(``python examples/NAME.py``); ``XLATDA_QUICK=1`` makes it tiny, as in the
test suite.
"""


def _titled(source: str, name: str) -> str:
    """The example with its docstring's first line made a reST title."""
    match = re.match(r'(\s*(?:[rR])?""")(.*?)\n', source)
    if match is None:
        return f'"""{name}\n{"=" * len(name)}\n"""\n' + source
    first = match.group(2).strip().rstrip(".")
    rest = source[match.end():]
    if re.match(r"\s*[=\-~^]{3,}\s*\n", rest):  # already a title
        return source
    return f"{match.group(1)}{first}\n{'=' * len(first)}\n\n{rest}"


def _copy_examples() -> None:
    if GALLERY_SRC.exists():
        shutil.rmtree(GALLERY_SRC)
    GALLERY_SRC.mkdir(parents=True)
    (GALLERY_SRC / "GALLERY_HEADER.rst").write_text(_HEADER)
    for path in sorted((ROOT / "examples").glob("*.py")):
        (GALLERY_SRC / path.name).write_text(_titled(path.read_text(), path.stem))


_copy_examples()

sphinx_gallery_conf = {
    "examples_dirs": [str(GALLERY_SRC)],
    "gallery_dirs": ["gallery"],
    "filename_pattern": RUN_PATTERN if RUN_EXAMPLES else r"^$",
    "plot_gallery": "True" if RUN_EXAMPLES else "False",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "write_computation_times": RUN_EXAMPLES,
    "abort_on_example_error": True,
}

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xlatda {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
html_show_sourcelink = False
