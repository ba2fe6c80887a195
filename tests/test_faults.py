"""Fault injection: killed writers, corrupted stores, bad inputs (the catalogue of
:mod:`tests.fault_cases`). Each case asserts a typed ``XlatdaError`` or an
identical result, and nothing half-written.

``python -m benchmarks.fault_table`` runs every case (slow ones too) and writes
``benchmarks/out/faults.md``.
"""

from __future__ import annotations

import pytest

from tests.fault_cases import CASES


def _param(case):
    marks = []
    if case.slow:
        marks.append(pytest.mark.slow)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail, raises=AssertionError))
    return pytest.param(case, id=case.id, marks=marks)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault(case, tmp_path):
    outcome = case.run(tmp_path)
    assert isinstance(outcome, str) and outcome
