"""The old subpackage path xlatda.assimilate keeps working for one release, with a warning."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, check=False)


def test_kernels_live_in_methods_and_the_function_is_not_shadowed():
    out = _run(
        "import xlatda, xlatda.methods.ensemble as m, inspect\n"
        "print(inspect.isfunction(xlatda.assimilate), m.ETKF.__name__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "ETKF"]
    assert "DeprecationWarning" not in out.stderr


def test_old_import_path_warns_and_keeps_the_function_callable():
    out = _run(
        "import xlatda\n"
        "from xlatda.assimilate.ensemble import ETKF\n"
        "import xlatda.methods.ensemble as m\n"
        "print(ETKF is m.ETKF, callable(xlatda.assimilate))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    assert "xlatda.assimilate is now xlatda.methods" in out.stderr
