"""Every ```python block of README.md runs, in a fresh namespace and a temporary directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _params():
    out = []
    for i, code in enumerate(BLOCKS):
        marks = []
        if "xlatda.fit(" in code:  # trains a model: about 40 s on 2 shared cores
            marks.append(pytest.mark.slow)
        out.append(pytest.param(i, code, id=f"block{i}", marks=marks))
    return out


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(("index", "code"), _params())
def test_readme_block_runs(index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    is_l96 = "Lorenz96" in code and "letkf" in code
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    if is_l96:
        rmse = float(namespace["rmse"].x.mean())
        # LETKF, 20 of 40 sites observed with error 1: about 0.4; climatology 3.6
        assert rmse < 0.6, rmse
