"""The cycling path's host-number diagnostics equal the kernels' tensor diagnostics.

``EnsembleMethod._cycle_step`` (what ``xlatda.cycle`` calls) returns one CPU
float64 analysis' diagnostics as Python numbers; they must be the numbers of
``step`` bit for bit, and the analysis and state the same, in every branch
(all observations on, some switched off, gross errors rejected, adaptive
inflation, parameters, every filter).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from xlatda.errors import FilterDivergenceWarning
from xlatda.methods.consistency import DivergenceMonitor
from xlatda.methods.ensemble import ETKF, DEnKF, EnKF, EnSRF
from xlatda.methods.letkf import LETKF
from xlatda.methods.localization import IndexDistance

F64 = torch.float64


def _case(kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, k = 12, 10
    ens = 3.0 + torch.randn(n, k, generator=g, dtype=F64)
    hx = ens[:, ::2].clone()
    y = torch.randn(k // 2, generator=g, dtype=F64)
    r = torch.full((k // 2,), 0.7, dtype=F64)
    if kind == "off":  # one observation switched off
        r[1] = math.inf
    elif kind == "gross":  # one observation far from the forecast: rejected
        y[2] = 60.0
    elif kind == "silent":  # every observation off: chi2 and spread ratio undefined
        r[:] = math.inf
    return ens, hx, y, r


def _same(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("kind", ["all", "off", "gross", "silent"])
@pytest.mark.parametrize("method", [
    ETKF(inflation=1.05), DEnKF(inflation=1.01), EnKF(inflation=1.06), EnSRF(rtps=0.5),
    ETKF(inflation="adaptive"), DEnKF(inflation=1.1, param_inflation=1.0),
    LETKF(inflation=1.04, radius=2.0),
])
def test_host_numbers_equal_tensor_diagnostics(method, kind):
    if kind == "silent" and isinstance(method, LETKF):
        pytest.skip("the LETKF needs an observation near every point")
    for seed in range(12):  # torch's sqrt and math.sqrt differ in ~1 % of cases
        _check_case(method, kind, seed)


def _check_case(method, kind, seed):
    ens, hx, y, r = _case(kind, seed)
    n_params = 2 if method.param_inflation is not None else 0
    loc = IndexDistance(10, np.arange(0, 10, 2)) if isinstance(method, LETKF) else None
    kw = {"locations": loc, "n_params": n_params}
    a1, d1, s1 = method.step(ens, hx, y, r, generator=torch.Generator().manual_seed(3), **kw)
    a2, d2, s2 = method._cycle_step(ens, hx, y, r, generator=torch.Generator().manual_seed(3),
                                    **kw)
    assert torch.equal(a1, a2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert d1.keys() == d2.keys()
    for key in d1:
        assert type(d2[key]) in (float, int), key
        assert _same(d1[key], d2[key]), (key, d1[key], d2[key])
    if kind == "gross":
        assert d2["n_rejected"] == 1 and d2["n_obs"] == 4
    if kind == "silent":
        assert math.isnan(d2["chi2"]) and math.isnan(d2["spread_ratio"])


def test_batched_or_float32_analyses_keep_tensors():
    ens, hx, y, r = _case("all")
    _, diag, _ = ETKF()._cycle_step(ens[None].expand(3, -1, -1), hx[None].expand(3, -1, -1),
                                    y, r)
    assert all(torch.is_tensor(v) and v.shape == (3,) for v in diag.values())
    _, diag, _ = ETKF()._cycle_step(ens.float(), hx.float(), y.float(), r.float())
    assert all(torch.is_tensor(v) for v in diag.values())


def test_monitor_counts_host_numbers_as_tensors():
    mon_t, mon_f = DivergenceMonitor(patience=3), DivergenceMonitor(patience=3)
    values = [1.0, 9.0, 9.0, 9.0, 9.0, 1.0, 0.01, 0.01, 0.01]
    st_t = st_f = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, v in enumerate(values):
            st_t = mon_t.update({"chi2": torch.tensor(v, dtype=F64)}, st_t, where=f"t{i}")
            st_f = mon_f.update({"chi2": v, "spread_ratio": 1.0}, st_f, where=f"t{i}")
            assert int(st_t["count"]) == int(st_f["count"])
            assert bool(st_t["warned"]) == bool(st_f["warned"])
    fired = [str(w.message) for w in caught if w.category is FilterDivergenceWarning]
    assert len(fired) == 4  # twice each: after 3 high chi2, after 3 low
    assert "(at t3)" in fired[1] and "(at t8)" in fired[3]
