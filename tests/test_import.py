"""``import xlatda`` is cheap: it registers the accessor and imports no torch."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_import_registers_the_accessor_without_torch():
    lines = _run(
        "import sys, xarray as xr, xlatda\n"
        "heavy = [m for m in ('torch', 'torchdiffeq', 'scipy', 'zarr', 'matplotlib')"
        " if m in sys.modules]\n"
        "print(hasattr(xr.Dataset(), 'lda'), hasattr(xr.DataArray(0), 'lda'), heavy or 'none')\n"
    )
    assert lines == ["True", "True", "none"]


def test_layout_and_options_need_no_torch():
    lines = _run(
        "import sys, numpy as np, xarray as xr, xlatda\n"
        "ds = xr.Dataset({'x': (('time', 'k'), np.zeros((3, 4)))})\n"
        "with xlatda.set_options(threads=2, progress=False):\n"
        "    kind = ds.lda.layout().kind\n"
        "print(kind, 'torch' in sys.modules)\n"
    )
    assert lines == ["generic", "False"]


def test_public_names_resolve_and_functions_are_not_shadowed_by_modules():
    lines = _run(
        "import inspect, xlatda\n"
        "import xlatda.cycle, xlatda.layout, xlatda.forecast  # the modules, imported first\n"
        "names = [n for n in xlatda.__all__ if getattr(xlatda, n) is None]\n"
        "funcs = [inspect.isfunction(getattr(xlatda, n))\n"
        "         for n in ('cycle', 'assimilate', 'layout', 'forecast', 'fit', 'encode')]\n"
        "from xlatda.cycle import cycle\n"
        "print(names or 'none', all(funcs), xlatda.cycle is cycle, 'plot' in dir(xlatda))\n"
    )
    assert lines == ["none", "True", "True", "True"]


def test_unknown_attribute_is_an_attribute_error():
    lines = _run(
        "import xlatda\n"
        "try:\n"
        "    xlatda.no_such_name\n"
        "except AttributeError as err:\n"
        "    print('no_such_name' in str(err))\n"
    )
    assert lines == ["True"]


def test_subpackages_the_docs_name_are_attributes():
    # The refusal of a bare function names ``xlatda.dynamics.CallableModel``; a user who
    # types that after ``import xlatda`` must get the class, not an AttributeError.
    lines = _run(
        "import xlatda\n"
        "from xlatda.dynamics import CallableModel\n"
        "from xlatda.encoders import PCA\n"
        "print(xlatda.dynamics.CallableModel is CallableModel, xlatda.encoders.PCA is PCA,\n"
        "      all(hasattr(xlatda, n) for n in ('methods', 'generative', 'io', 'sphere')))\n"
    )
    assert lines == ["True", "True", "True"]
