"""docs/guide.md: every python block runs, in order, in one namespace."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.markdown_blocks import python_blocks, run_blocks, undefined_names

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_no_snippet_uses_undefined_names():
    for page in ("guide.md", "own_data.md"):
        blocks = python_blocks(DOCS / page)
        assert blocks, page
        assert undefined_names(blocks) == [], page


def test_undefined_names_are_found():
    assert undefined_names(["x = rng.normal()", "y = x + train", "import numpy as np\nnp.e"]) == [
        (0, "rng"), (1, "train")]
    assert undefined_names(["f = [a for a in range(3)]", "g = [b + f[0] for b in f]"]) == []


def test_guide_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import xlatda

    with xlatda.set_options(progress=False):
        ns, _ = run_blocks(DOCS / "guide.md")
    assert np.isfinite(ns["post"].height.values).all()  # the score-based posterior sample
    assert ns["res"].analysis.sizes["member"] == 16
    assert np.isfinite(ns["z"].z.values).all() and np.isfinite(ns["z_state_only"].z.values).all()
    assert (tmp_path / "sw_z.zarr").is_dir()
