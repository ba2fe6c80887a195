"""The lean cycle loop (issue 16): what each analysis computes, and that it is still right.

- the observation operator is applied once to the background ensemble per
  analysis and once to the analysis means of all analyses at the end (one
  batch where exact), and built once per place set;
- the diagnostics (innovation chi-square, spread ratio, observation-space
  RMS) equal their closed forms on a linear-Gaussian cycle, and the analysis
  mean is the exact Kalman update with the (inflated) forecast covariance;
- the one-sync divergence monitor counts and warns as the batched one;
- the gather used for operators with one or two entries a row gives the
  sparse product's numbers (NaN included);
- chunked (dask) observations give the same cycle as eager ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st

import xlatda
import xlatda.spaces
from xlatda.dynamics.physical import Lorenz96, PhysicalModel
from xlatda.errors import FilterDivergenceWarning
from xlatda.methods.consistency import DivergenceMonitor, innovation_chi2
from xlatda.obs_geometry import index_interpolation_matrix
from xlatda.sparse_interp import ObservationOperator, _Compiled

F64 = torch.float64
N_SITES = 8


class LinearModel(PhysicalModel):
    """``x_{k+1} = M x_k``: a damped rotation of neighbouring sites (linear-Gaussian twin)."""

    def __init__(self, n: int = N_SITES, dt: float = 0.05) -> None:
        super().__init__(dt)
        self.state_shape = (n,)
        g = torch.Generator().manual_seed(5)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
        self.M = 0.97 * q

    def step(self, x, dt=None, theta=None):
        return x @ self.M.T


def _twin(steps: int = 12, every: int = 2, seed: int = 0):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=steps, seed=seed)
    sites = np.arange(0.0, N_SITES, every)
    k = np.tile(sites, steps)
    t = np.repeat(truth.time.values[1:], sites.size)
    rng = np.random.default_rng(seed + 1)
    vals = truth.x.isel(time=slice(1, None)).values[:, ::every].ravel()
    std = np.where(k % 4 == 0, 0.5, 1.0)
    obs = xr.Dataset({"x": ("obs", vals + std * rng.normal(size=k.size))},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    obs["x_error_std"] = ("obs", std)
    obs["x"].attrs["ancillary_variables"] = "x_error_std"
    return truth, obs


@pytest.fixture()
def counted(monkeypatch):
    """Count operator builds and applications (with the batch size of each)."""
    calls = {"build": 0, "apply": []}
    build = xlatda.spaces.build_operator
    apply = ObservationOperator.__call__
    gather = _Compiled.gather
    inside = []

    def counting_build(*args, **kwargs):
        calls["build"] += 1
        return build(*args, **kwargs)

    def counting_apply(self, x):
        calls["apply"].append(int(np.prod(x.shape[: x.dim() - len(self.state_shape)])))
        inside.append(True)
        try:
            return apply(self, x)
        finally:
            inside.pop()

    def counting_gather(self, x):
        # the cycle's fused loop applies the operator's gather directly
        # (PhysicalSpace.observer): count those applications too, not twice
        if not inside:
            calls["apply"].append(int(x.shape[0]))
        return gather(self, x)

    monkeypatch.setattr(xlatda.spaces, "build_operator", counting_build)
    monkeypatch.setattr(ObservationOperator, "__call__", counting_apply)
    monkeypatch.setattr(_Compiled, "gather", counting_gather)
    return calls


@pytest.mark.parametrize("method", ["denkf", "etkf", "enkf", "letkf"])
def test_each_analysis_observes_the_background_once_and_the_analysis_mean_once(counted, method):
    truth, obs = _twin(steps=10)
    kw = {"radius": 2} if method == "letkf" else {}
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), method=method, members=6,
                       init_std=1.0, seed=0, progress=False, **kw)
    n = res.analysis.sizes["time"]
    assert n == 10
    # the same places at every time: one operator for the whole cycle
    assert counted["build"] == 1
    # per analysis: the 6 background members (update, chi2, spread ratio and the
    # innovation statistics share them); at the end the analysis means (residuals),
    # all in one application
    assert counted["apply"][:n] == [6] * n
    assert counted["apply"][n:] == [n]


def test_operators_are_built_once_per_distinct_place_set(counted):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=6, seed=0)
    t = truth.time.values[1:]
    places = [[0.0, 3.0], [1.0, 5.0]]  # two place sets, alternating
    k = np.concatenate([places[i % 2] for i in range(len(t))])
    obs = xr.Dataset({"x": ("obs", np.ones(k.size), {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", np.repeat(t, 2))})
    xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), members=5, init_std=1.0,
                 progress=False, gross_error=None)
    assert counted["build"] == 2
    # each background once, then the analysis means of each place set in one batch
    assert counted["apply"] == [5] * len(t) + [len(t) // 2] * 2


@pytest.mark.filterwarnings("ignore::xlatda.errors.FilterDivergenceWarning")  # linear vs L96
@pytest.mark.parametrize("method", ["etkf", "denkf", "ensrf", "enkf"])
def test_diagnostics_and_mean_match_the_closed_form_on_a_linear_gaussian_cycle(method):
    truth, obs = _twin(steps=8)
    infl = 1.1
    model = LinearModel()
    res = xlatda.cycle(truth.isel(time=0), obs, model, method=method, members=12, init_std=1.0,
                       seed=3, progress=False, inflation=infl, gross_error=None)
    diag = res.diagnostics
    sites = np.arange(0, N_SITES, 2)
    H = np.eye(N_SITES)[sites]
    for i, t in enumerate(res.analysis.time.values):
        sel = obs.time.values == t
        y, r = obs.x.values[sel], obs.x_error_std.values[sel]
        R = np.diag(r**2)
        Xb = res.background.x.isel(time=i).values  # (N, n)
        xb = Xb.mean(0)
        Pb = infl**2 * np.cov(Xb.T)
        innov = y - H @ xb
        Sigma = H @ Pb @ H.T + R
        chi2 = innov @ np.linalg.solve(Sigma, innov) / y.size
        np.testing.assert_allclose(diag.chi2.values[i], chi2, rtol=1e-10)
        ratio = np.sqrt(np.trace(Sigma) / (innov @ innov))
        np.testing.assert_allclose(diag.spread_ratio.values[i], ratio, rtol=1e-10)
        xa = res.analysis.x.isel(time=i).values.mean(0)
        if method != "enkf":  # the deterministic filters' mean is the Kalman update
            kalman = xb + Pb @ H.T @ np.linalg.solve(Sigma, innov)
            np.testing.assert_allclose(xa, kalman, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(diag.innovation_rms.values[i], np.sqrt(np.mean(innov**2)),
                                   rtol=1e-12)
        np.testing.assert_allclose(diag.residual_rms.values[i],
                                   np.sqrt(np.mean((y - H @ xa) ** 2)), rtol=1e-10)
        spread = np.sqrt(np.mean((H @ np.cov(Xb.T) @ H.T).diagonal()))
        np.testing.assert_allclose(diag.background_spread_obs.values[i], spread, rtol=1e-12)
        np.testing.assert_allclose(diag.obs_error_rms.values[i], np.sqrt(np.mean(r**2)),
                                   rtol=1e-12)
        assert int(diag.n_obs.values[i]) == y.size


def test_divergence_warning_names_the_analysis_and_its_time():
    # the label is formatted only when a warning is raised; it still says where
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=12, seed=0)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=N_SITES,
                                   error_std=0.01, seed=1)
    bg = truth.isel(time=0).copy()
    bg["x"] = bg.x + 3.0  # far off, tiny spread: chi2 way above its band
    with pytest.warns(FilterDivergenceWarning, match=r"at analysis 4, time 0\.25"):
        xlatda.cycle(bg, obs, Lorenz96(n=N_SITES), method="etkf", members=3, init_std=1e-3,
                     progress=False, inflation=1.0, gross_error=None)


def test_statistics_of_all_rows_at_once_equal_the_row_by_row_formula():
    # the recorder finishes the observation-space statistics of every analysis
    # together (grouped by observation count): same numbers, bit for bit
    from types import SimpleNamespace

    from xlatda.cycle_records import _obs_moments, _obs_statistics_rows, obs_statistics

    g = torch.Generator().manual_seed(2)
    entries = []
    for n_members, n_obs, dtype in [(40, 40, F64), (7, 13, F64), (40, 40, F64), (1, 5, F64),
                                    (32, 512, torch.float32), (7, 13, F64), (32, 512,
                                                                             torch.float32)]:
        hb = 3 * torch.randn(n_members, n_obs, generator=g, dtype=F64)
        table = SimpleNamespace(values=torch.randn(n_obs, generator=g, dtype=F64),
                                error_std=torch.rand(n_obs, generator=g, dtype=F64) + 0.1)
        entries.append((hb.to(dtype), torch.randn(n_obs, generator=g, dtype=F64).to(dtype),
                        table))
    got = _obs_statistics_rows([(*_obs_moments(hb), ha, table) for hb, ha, table in entries])
    want = np.stack([obs_statistics(*e).numpy() for e in entries])
    assert got.shape == (7, 4)
    np.testing.assert_array_equal(got, want)


def test_diagnostic_columns_of_scalars_and_of_other_shapes():
    from xlatda.cycle_records import _diagnostic_column

    t = torch.tensor
    scalars = [(t(1.5, dtype=F64), 0, 1), (t(2, dtype=torch.int64), 0, 1),
               (t(0.25, dtype=torch.float32), 0, 1)]
    np.testing.assert_array_equal(_diagnostic_column(scalars), [1.5, 2.0, 0.25])
    mixed = [*scalars, None, (t([7.0, 8.0], dtype=F64), 1, 2), (t([9.0], dtype=F64), 0, 1),
             (3.0, 0, 1)]
    np.testing.assert_array_equal(_diagnostic_column(mixed),
                                  [1.5, 2.0, 0.25, np.nan, 8.0, 9.0, 3.0])
    shaped = [(t([4.0], dtype=F64), 0, 1), (t([5.0], dtype=F64), 0, 1)]  # (1,) each
    np.testing.assert_array_equal(_diagnostic_column(shaped), [4.0, 5.0])


def test_filter_chi2_equals_the_separate_woodbury_computation():
    g = torch.Generator().manual_seed(0)
    for method in ("etkf", "denkf", "ensrf", "enkf"):
        kernel = xlatda.methods.get_method(method)(inflation=1.2, gross_error=None)
        for n_members, n_obs in ((10, 4), (5, 30)):  # both sides of P < N
            ens = torch.randn(n_members, 6, generator=g, dtype=F64)
            hx = torch.randn(n_members, n_obs, generator=g, dtype=F64)
            y = torch.randn(n_obs, generator=g, dtype=F64)
            r = 0.5 + torch.rand(n_obs, generator=g, dtype=F64)
            _, diag, _ = kernel.step(ens, hx, y, r, generator=g)
            S = 1.2 * (hx - hx.mean(0)) / r / (n_members - 1) ** 0.5
            d = (y - hx.mean(0)) / r
            torch.testing.assert_close(diag["chi2"], innovation_chi2(S, d), rtol=1e-11, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.01, 0.5, 1.0, 3.0, 50.0, float("nan")]), min_size=1,
                max_size=25),
       st.integers(1, 4))
def test_scalar_monitor_counts_and_warns_as_the_batched_one(chi2s, patience):
    mon = DivergenceMonitor(patience=patience)
    fast, batched = None, None
    n_fast = n_batched = 0
    for i, v in enumerate(chi2s):
        with warnings.catch_warnings(record=True) as w1:
            warnings.simplefilter("always")
            fast = mon.update({"chi2": torch.tensor(v, dtype=F64),
                               "spread_ratio": torch.tensor(1.0, dtype=F64)}, fast, where=i)
        with warnings.catch_warnings(record=True) as w2:
            warnings.simplefilter("always")
            batched = mon.update({"chi2": torch.tensor([v], dtype=F64),
                                  "spread_ratio": torch.tensor([1.0], dtype=F64)}, batched,
                                 where=i)
        n_fast += sum(issubclass(w.category, FilterDivergenceWarning) for w in w1)
        n_batched += sum(issubclass(w.category, FilterDivergenceWarning) for w in w2)
        assert int(fast["count"]) == int(batched["count"][0])
        assert bool(fast["warned"]) == bool(batched["warned"][0])
        assert n_fast == n_batched


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 15.99), min_size=1, max_size=12), st.integers(1, 3),
       st.booleans())
@example([4.0, 5.0, 9.0], 1, True)  # on grid points, one beside the NaN (stored zero weight)
@example([4.0, 7.5], 1, True)
def test_one_or_two_entry_rows_give_the_sparse_products_numbers(positions, channels, nan):
    H = index_interpolation_matrix(16, positions, periodic=True)
    chan = torch.arange(len(positions)) % channels
    op = ObservationOperator(H, channel=chan, n_channels=channels)
    g = torch.Generator().manual_seed(len(positions))
    x = torch.randn(3, channels, 16, generator=g, dtype=F64)
    if nan:
        x[1, 0, 5] = float("nan")
    compiled = op._compiled(x)
    assert compiled.pairs is not None
    got = op(x)
    want = compiled.forward(x.reshape(3, -1))  # the sparse product
    if nan and compiled.single is not None:
        # rows on grid points read one value: NaN only where a non-zero weight
        # meets it (the sparse product also spreads it through stored zeros)
        hit = op.dense()[:, 5] != 0
        assert torch.equal(got[1].isnan(), hit)
        torch.testing.assert_close(got[[0, 2]], want[[0, 2]], rtol=0, atol=0)
        clean = compiled.forward(x.nan_to_num().reshape(3, -1))
        torch.testing.assert_close(got[1][~hit], clean[1][~hit], rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    if not nan:  # a dense product spreads NaN through every zero; sparse, only stored entries
        torch.testing.assert_close(got, (op.dense() @ x.reshape(3, -1).T).T)


def test_chunked_observations_give_the_eager_cycle():
    truth, obs = _twin(steps=6)
    kw = dict(members=6, init_std=1.0, seed=1, progress=False)
    eager = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), **kw)
    lazy = xlatda.cycle(truth.isel(time=0), obs.chunk({"obs": 5}), Lorenz96(n=N_SITES), **kw)
    np.testing.assert_array_equal(lazy.analysis.x.values, eager.analysis.x.values)
    for name in eager.diagnostics.data_vars:
        np.testing.assert_array_equal(lazy.diagnostics[name].values,
                                      eager.diagnostics[name].values)


def test_moments_of_all_rows_at_once_equal_the_row_by_row_ones():
    # the recorder reduces the background predictions of all analyses over their
    # members together: bit for bit the row-by-row moments (P = 1, transposed
    # predictions and single states included)
    from xlatda.cycle_records import _obs_moments, _obs_moments_rows

    g = torch.Generator().manual_seed(4)
    shapes = [(40, 40), (7, 40), (40, 40), (24, 13), (1, 5), (7, 40), (5, 1), (5, 1),
              (32, 512), (24, 13), (40, 40), (1, 5), (3, 2)]
    preds = [3 * torch.randn(*s, generator=g, dtype=F64) + 1 for s in shapes]
    preds.append(torch.randn(13, 24, generator=g, dtype=F64).T)  # transposed (24, 13)
    preds.append(torch.randn(2, 3, generator=g, dtype=torch.float32).T)
    got = _obs_moments_rows(preds)
    for hx, (mean, var) in zip(preds, got):
        want_mean, want_var = _obs_moments(hx)
        assert torch.equal(mean, want_mean) and torch.equal(var, want_var)


@pytest.mark.parametrize("positions", [[0.0, 2.0, 4.0, 6.0], [0.5, 3.25, 7.0]])
def test_analysis_means_observed_together_equal_one_by_one(positions):
    # observe_means: one stack and one application per place set where the operator
    # is a gather (ensembles with members apart or contiguous), row by row otherwise
    from xlatda.spaces import PhysicalSpace

    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=2, seed=0)
    space = PhysicalSpace(xlatda.layout(truth.isel(time=0)), Lorenz96(n=N_SITES))
    tables = []
    for pos in (positions, positions[:2], positions):
        ds = xr.Dataset({"x": ("obs", np.ones(len(pos)), {"error_std": 1.0})},
                        coords={"k": ("obs", np.asarray(pos))})
        tables.append(xlatda.obs.contract.to_tensors(ds, space.layout))
    g = torch.Generator().manual_seed(1)
    states = [torch.randn(6, N_SITES, generator=g, dtype=F64) for _ in range(6)]
    states += [torch.randn(N_SITES, 6, generator=g, dtype=F64).T for _ in range(3)]  # LETKF's
    states.append(torch.randn(6, 2 * N_SITES, generator=g, dtype=F64)[:, ::2])  # strided
    tables = [tables[i % 3] for i in range(len(states))]
    got = space.observe_means(states, tables)
    want = [space.observe_mean(s, t) for s, t in zip(states, tables)]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("case", ["all on", "one off", "outlier"])
def test_filter_diagnostics_equal_the_consistency_functions_bit_for_bit(dtype, case):
    # step() takes S and diag(S^T S) + 1 once for the gross-error check, the update
    # and the spread ratio when every observation is on (fixed inflation, float64);
    # the numbers are those of the separate functions on the update's S and d
    from xlatda.methods.consistency import gross_error_mask, spread_ratio

    g = torch.Generator().manual_seed(3)
    n_members, n_obs, infl = 9, 12, 1.07
    ens = torch.randn(n_members, 5, generator=g, dtype=F64).to(dtype)
    hx = torch.randn(n_members, n_obs, generator=g, dtype=F64).to(dtype)
    y = torch.randn(n_obs, generator=g, dtype=F64).to(dtype)
    r = (0.5 + torch.rand(n_obs, generator=g, dtype=F64)).to(dtype)
    if case == "one off":
        r[4] = float("inf")
    if case == "outlier":
        y[2] += 100.0
    for method in ("etkf", "denkf", "enkf", "letkf"):
        kw = {"radius": 3.0} if method == "letkf" else {}
        loc = xlatda.methods.localization.IndexDistance(5, obs_positions=torch.arange(n_obs) % 5)
        kernel = xlatda.methods.get_method(method)(inflation=infl, **kw)
        _, diag, _ = kernel.step(ens, hx, y, r, generator=torch.Generator().manual_seed(0),
                                 locations=loc)
        scale = (n_members - 1) ** 0.5
        hm = hx.mean(0)
        on = torch.isfinite(r)
        inv = torch.reciprocal(r)
        S0 = (hx - hm) * (inv / scale)
        d = torch.where(on, (y - hm) * inv, 0.0)
        bad = on & gross_error_mask(S0 * torch.tensor(infl**2, dtype=dtype).sqrt(), d, 5.0)
        S0, d, on = S0 * ~bad, torch.where(bad, 0.0, d), on & ~bad
        S = S0 * torch.tensor(infl, dtype=dtype)
        assert torch.equal(diag["spread_ratio"], spread_ratio(S, d, r, on))
        assert int(diag["n_rejected"]) == (1 if case == "outlier" else 0)
        assert int(diag["n_obs"]) == n_obs - (case != "all on")
        if method == "letkf":  # no own factorisation: the separate Woodbury form
            assert torch.equal(diag["chi2"], innovation_chi2(S, d, on))


def test_letkf_localises_once_per_place_set_and_batches_the_grid_points(monkeypatch):
    # the LETKF's distances and local observation lists are built once per distinct
    # place set (keyed by content, not by table object), and each analysis is one
    # batched transform over all grid points (no loop over them)
    import xlatda.methods.letkf as letkf_module
    from xlatda.methods.localization import gaspari_cohn
    from xlatda.spaces import PhysicalSpace

    calls = {"locations": 0, "taper": 0, "transform": []}
    build = PhysicalSpace._build_locations
    transform = letkf_module.etkf_transform

    def counting_build(self, table):
        calls["locations"] += 1
        return build(self, table)

    def counting_taper(d, c):
        calls["taper"] += 1
        return gaspari_cohn(d, c)

    def counting_transform(S, d):
        calls["transform"].append(tuple(S.shape))
        return transform(S, d)

    monkeypatch.setattr(PhysicalSpace, "_build_locations", counting_build)
    monkeypatch.setattr(xlatda.methods.localization, "gaspari_cohn", counting_taper)
    monkeypatch.setattr(letkf_module, "etkf_transform", counting_transform)
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=8, seed=0)
    t = truth.time.values[1:]
    places = [[0.0, 3.0, 5.0], [1.0, 4.0, 6.0]]
    k = np.concatenate([places[i % 2] for i in range(len(t))])
    obs = xr.Dataset({"x": ("obs", np.ones(k.size), {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", np.repeat(t, 3))})
    xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), method="letkf", members=5,
                 init_std=1.0, progress=False, radius=2.0, gross_error=None)
    assert calls["locations"] == 2 and calls["taper"] == 2
    # one transform per analysis, batched over the 8 grid points: (D, N, K)
    assert len(calls["transform"]) == len(t)
    assert all(shape[:2] == (N_SITES, 5) for shape in calls["transform"])
