"""Innovation chi-square, spread ratio, gross-error check and the divergence monitor."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import ConfigError, FilterDivergenceWarning, XlatdaError
from xlatda.methods.consistency import (
    DivergenceMonitor,
    gross_error_mask,
    innovation_chi2,
    spread_ratio,
)
from xlatda.methods.ensemble import ETKF

F64 = torch.float64


def _consistent(batch=2000, n=6, p=5, n_members=12, seed=0, spread=1.0):
    """Ensembles whose own covariance is the truth's error covariance (times ``spread**2``)."""
    g = torch.Generator().manual_seed(seed)
    ens = torch.randn(batch, n_members, n, generator=g, dtype=F64)
    mean = ens.mean(-2)
    A = (ens - mean.unsqueeze(-2)) / math.sqrt(n_members - 1)  # A^T A = P_ens
    xi = torch.randn(batch, n_members, generator=g, dtype=F64)
    truth = mean + (xi.unsqueeze(-2) @ A).squeeze(-2) / spread  # cov P_ens / spread^2
    H = torch.randn(p, n, generator=g, dtype=F64)
    r = 0.5 + torch.rand(p, generator=g, dtype=F64)
    y = truth @ H.T + r * torch.randn(batch, p, generator=g, dtype=F64)
    return ens, H, y, r


def _scaled(ens, H, y, r):
    n_members = ens.shape[-2]
    hx = ens @ H.T
    S = (hx - hx.mean(-2, keepdim=True)) / r / math.sqrt(n_members - 1)
    d = (y - hx.mean(-2)) / r
    return S, d


def test_chi2_matches_the_direct_formula():
    ens, H, y, r = _consistent(batch=4)
    S, d = _scaled(ens, H, y, r)
    m = S.mT @ S + torch.eye(H.shape[0], dtype=F64)
    direct = (d.unsqueeze(-2) @ torch.linalg.solve(m, d.unsqueeze(-1))).reshape(-1) / H.shape[0]
    torch.testing.assert_close(innovation_chi2(S, d), direct)


def test_chi2_is_one_in_expectation_for_a_consistent_system():
    S, d = _scaled(*_consistent())
    chi2 = innovation_chi2(S, d)
    # mean of 2000 values with std sqrt(2/5): standard error 0.014
    assert abs(float(chi2.mean()) - 1.0) < 0.05, float(chi2.mean())
    ratio = spread_ratio(S, d, _consistent()[3])
    # actual / expected innovation variance is 1 in expectation
    assert abs(float(ratio.square().reciprocal().mean()) - 1.0) < 0.05


def test_chi2_is_large_for_an_under_dispersed_ensemble():
    S, d = _scaled(*_consistent(spread=0.25))  # truth 4x farther than the spread says
    assert float(innovation_chi2(S, d).mean()) > 3.0
    assert float(spread_ratio(S, d, _consistent()[3]).square().reciprocal().mean()) > 3.0


def test_chi2_counts_only_active_observations():
    ens, H, y, r = _consistent(batch=3)
    S, d = _scaled(ens, H, y, r)
    S0, d0 = S.clone(), d.clone()
    S0[..., 1] = 0.0
    d0[..., 1] = 0.0
    active = torch.tensor([True, False, True, True, True])
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(
        innovation_chi2(S0, d0, active), innovation_chi2(S[..., keep], d[..., keep])
    )


def test_gross_error_check_removes_the_outlier_before_the_update():
    ens, H, y, r = _consistent(batch=2)
    hx = ens @ H.T
    bad = y.clone()
    bad[0, 2] += 1e3  # one gross error in batch element 0
    ana, diag, _ = ETKF(gross_error=5.0).step(ens, hx, bad, r)
    assert diag["n_rejected"].tolist() == [1, 0]
    assert diag["n_obs"].tolist() == [4, 5]
    r_off = r.expand(2, -1).clone()
    r_off[0, 2] = math.inf
    torch.testing.assert_close(ana, ETKF(gross_error=None).analyse(ens, hx, y, r_off))
    # switched off, the outlier would be assimilated
    unchecked = ETKF(gross_error=None).analyse(ens, hx, bad, r)
    assert (unchecked[0] - ana[0]).abs().max() > 1.0
    with pytest.raises(ConfigError, match="gross_error"):
        ETKF(gross_error=-1.0)


def test_gross_error_mask_threshold():
    S = torch.zeros(4, 3, dtype=F64)
    S[0, 0], S[1, 0] = 1.0, -1.0  # diag(S^T S)_0 = 2
    d = torch.tensor([5.0 * math.sqrt(3.0) - 1e-9, 5.0 + 1e-9, 4.0], dtype=F64)
    assert gross_error_mask(S, d, 5.0).tolist() == [False, True, False]


def _l96_cycle(method, n_members, cycles, seed=0, monitor=None):
    model = Lorenz96(n=40, forcing=8.0)
    g = torch.Generator().manual_seed(seed)
    truth = 8.0 + torch.randn(40, generator=g, dtype=F64)
    for _ in range(200):
        truth = model.step(truth)
    ens = truth + torch.randn(n_members, 40, generator=g, dtype=F64)
    r = torch.ones(40, dtype=F64)
    state, mon_state, errors = None, None, []
    for k in range(cycles):
        truth = model.step(truth)
        ens = model.step(ens)
        y = truth + torch.randn(40, generator=g, dtype=F64)
        ens, diag, state = method.step(ens, ens, y, r, generator=g, state=state)
        if monitor is not None:
            mon_state = monitor.update(diag, mon_state, where=f"cycle {k}")
        errors.append(float((ens.mean(0) - truth).square().mean().sqrt()))
    return errors


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_monitor_warns_on_a_diverging_filter(one_thread):
    # 6 members and no inflation: far below the 13 unstable directions of Lorenz-96
    with pytest.warns(FilterDivergenceWarning, match="cycle"):
        errors = _l96_cycle(ETKF(), 6, 150, monitor=DivergenceMonitor())
    assert sum(errors[-50:]) / 50 > 1.0  # it did diverge


def test_monitor_is_silent_on_a_healthy_filter(one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterDivergenceWarning)
        errors = _l96_cycle(ETKF(inflation=1.05, rotate=True), 20, 150,
                            monitor=DivergenceMonitor())
    assert sum(errors[-50:]) / 50 < 0.3


def test_monitor_state_and_band_logic():
    mon = DivergenceMonitor(chi2_band=(0.5, 2.0), patience=3)
    state = None
    seq = [3.0, 3.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 0.1, float("nan"), 0.1, 0.1]
    fired = []
    for v in seq:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = mon.update({"chi2": torch.tensor([v, 1.0])}, state)
        fired.append(len(caught))
    # warns at the 3rd consecutive out-of-band value, once per excursion; nan counts as in band
    assert fired == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert state["count"].tolist() == [2, 0]
    assert issubclass(FilterDivergenceWarning, XlatdaError)
    assert issubclass(FilterDivergenceWarning, RuntimeWarning)
    with pytest.raises(ConfigError, match="patience"):
        DivergenceMonitor(patience=0)
    with pytest.raises(ConfigError, match="chi2"):
        mon.update({"other": torch.tensor(1.0)})


def test_step_diagnostics_shapes_and_values():
    ens, H, y, r = _consistent(batch=3)
    hx = ens @ H.T
    ana, diag, state = ETKF(inflation=1.1).step(ens, hx, y, r)
    assert state == {}
    for key in ("chi2", "spread_ratio", "inflation", "n_obs", "n_rejected"):
        assert diag[key].shape == (3,), key
    torch.testing.assert_close(diag["inflation"], torch.full((3,), 1.1, dtype=F64))
    S, d = _scaled(ens, H, y, r)
    torch.testing.assert_close(diag["chi2"], innovation_chi2(1.1 * S, d))
    torch.testing.assert_close(ana, ETKF(inflation=1.1).analyse(ens, hx, y, r))
