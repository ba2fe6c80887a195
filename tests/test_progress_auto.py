"""``progress="auto"``: bars in a terminal or a Jupyter kernel, none in logs."""

from __future__ import annotations

import sys
import types

import pytest

import xlatda
from xlatda import options
from xlatda.errors import ConfigError


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty, kernel, want", [(True, False, True), (False, False, False),
                                               (False, True, True)])
def test_auto_follows_the_terminal_or_a_kernel(monkeypatch, tty, kernel, want):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    if kernel:
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    else:
        monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert options.OPTIONS["progress"] == "auto"  # the default
    assert xlatda.get_options()["progress"] is want
    with xlatda.set_options(progress=True):
        assert xlatda.get_options()["progress"] is True  # explicit settings win
    with xlatda.set_options(progress=False):
        assert xlatda.get_options()["progress"] is False


def test_bad_progress_value_is_refused():
    with pytest.raises(ConfigError, match="'auto'"):
        xlatda.set_options(progress="yes")
