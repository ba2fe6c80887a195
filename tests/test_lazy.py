"""Lazy end to end: building each public operation on dask input computes nothing.

Every test builds the result under ``raise_if_dask_computes()`` (a dask
scheduler that fails on any compute), checks the result is dask-backed with
one task chunk per input chunk, and only then computes and compares it with
the eager result.
"""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda import metrics
from xlatda.batch import assimilate_cases


@pytest.fixture(scope="module")
def data():
    return xlatda.datasets.lorenz96(n=16, steps=199, seed=0)


@pytest.fixture(scope="module")
def model(data):
    return xlatda.fit(data, encoder="pca", latent_dim=8, dynamics="ode", uncertainty="diagonal",
                      epochs=2, progress=False, dynamics_options={"width": 16, "depth": 1})


def _lazy(obj) -> bool:
    arrays = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    return all(isinstance(a.data, dsa.Array) for a in arrays)


def test_encode_builds_lazily(data, model, raise_if_dask_computes):
    with raise_if_dask_computes():
        z = data.chunk(time=20).lda.encode(model)
    assert _lazy(z) and z.z.data.npartitions == 10
    np.testing.assert_allclose(z.z.values, data.lda.encode(model).z.values, atol=1e-5)


def test_decode_builds_lazily(data, model, raise_if_dask_computes):
    z = data.lda.encode(model)
    with raise_if_dask_computes():
        back = z.chunk(time=67).lda.decode(model)
    assert _lazy(back) and back.x.data.npartitions == 3
    np.testing.assert_allclose(back.x.values, z.lda.decode(model).x.values, atol=1e-5)


def test_evolve_builds_lazily(data, model, raise_if_dask_computes):
    z = data.isel(time=slice(0, 6)).lda.encode(model)
    with raise_if_dask_computes():
        fc = z.chunk(time=2).lda.evolve(model, steps=2, members=3, noise=True, seed=1)
    assert _lazy(fc) and fc.z.data.npartitions == 3
    eager = z.lda.evolve(model, steps=2, members=3, noise=True, seed=1)
    np.testing.assert_allclose(fc.z.values, eager.z.values, atol=1e-5)


def test_forecast_builds_lazily(data, model, raise_if_dask_computes):
    init = data.isel(time=slice(0, 6))
    with raise_if_dask_computes():
        fc = init.chunk(time=3).lda.forecast(model, steps=2)
    assert _lazy(fc) and fc.x.data.npartitions == 2
    np.testing.assert_allclose(fc.x.values, init.lda.forecast(model, steps=2).x.values,
                               atol=1e-4)


def test_assimilate_cases_builds_lazily(data, model, raise_if_dask_computes):
    idx = [10, 20, 30, 40, 50, 60]
    cases = data.isel(time=idx).swap_dims(time="case")
    obs = xr.concat([xlatda.obs.sample_points(data.isel(time=[t]), n=6, error_std=1.0, seed=t)
                     for t in idx], dim="case")
    with raise_if_dask_computes():
        ana = assimilate_cases(cases.chunk(case=2), obs.chunk(case=2), model, members=6,
                               init_std=0.5, inflation=1.05)
    assert _lazy(ana) and ana.x.data.npartitions == 3
    assert ana.x.dims == ("case", "member", "k")
    eager = assimilate_cases(cases, obs, model, members=6, init_std=0.5, inflation=1.05)
    np.testing.assert_array_equal(ana.x.values, eager.x.values)
    np.testing.assert_array_equal(ana.time.values, data.time.values[idx])


def test_metrics_build_lazily(data, raise_if_dask_computes):
    rng = np.random.default_rng(0)
    truth = data.x
    ens = truth + xr.DataArray(rng.normal(size=(5, *truth.shape)), dims=("member", *truth.dims))
    lazy_ens, lazy_truth = ens.chunk(time=20, member=-1), truth.chunk(time=20)
    scores = {
        "rmse": lambda e, t: metrics.rmse(e.mean("member"), t),
        "mae": lambda e, t: metrics.mae(e.mean("member"), t, dim="k"),
        "bias": lambda e, t: metrics.bias(e.mean("member"), t, dim="time"),
        "spread": lambda e, t: metrics.spread(e, dim="time"),
        "ssr": lambda e, t: metrics.spread_skill_ratio(e, t),
        "crps": lambda e, t: metrics.crps_ensemble(e, t, dim="k"),
        "rank": lambda e, t: metrics.rank_histogram(e, t, seed=0),
    }
    for name, fn in scores.items():
        with raise_if_dask_computes():
            lazy = fn(lazy_ens, lazy_truth)
        assert _lazy(lazy), name
        xr.testing.assert_allclose(lazy.compute(), fn(ens, truth))
