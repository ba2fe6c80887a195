"""Independent analyses over a case dimension: eager == chunked, per-case seeds."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.batch import assimilate_cases, case_seed, stack_obs
from xlatda.errors import ConfigError

IDX = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def data():
    return xlatda.datasets.lorenz96(n=16, steps=60, seed=0)


@pytest.fixture(scope="module")
def model(data):
    return xlatda.fit(data, encoder="pca", latent_dim=8, progress=False)


@pytest.fixture(scope="module")
def cases(data):
    return data.isel(time=IDX).swap_dims(time="case")


@pytest.fixture(scope="module")
def obs(data):
    # Different numbers of observations per case: NaN-padded to one size.
    sets = [xlatda.obs.sample_points(data.isel(time=[t]), n=4 + i, error_std=1.0, seed=t)
            for i, t in enumerate(IDX)]
    return stack_obs(sets)


@pytest.mark.parametrize("method,kw", [
    ("etkf", {"members": 6, "init_std": 0.5, "inflation": 1.02}),
    ("enkf", {"members": 6, "init_std": 0.5}),
    ("3dvar", {"b_std": 0.5}),
])
def test_eager_equals_chunked_any_chunking(cases, obs, model, method, kw):
    eager = assimilate_cases(cases, obs, model, method=method, seed=3, **kw)
    for chunk in (1, 2, 5):
        lazy = assimilate_cases(cases.chunk(case=chunk), obs.chunk(case=chunk), model,
                                method=method, seed=3, **kw)
        assert lazy.x.chunks[0] == cases.chunk(case=chunk).x.chunks[0]
        xr.testing.assert_identical(lazy.compute(), eager)


def test_each_case_is_the_single_analysis_with_its_seed(cases, obs, model):
    out = assimilate_cases(cases.chunk(case=2), obs, model, members=6, init_std=0.5, seed=7)
    for i in range(len(IDX)):
        o = obs.isel(case=i).dropna("obs", subset=["x"])
        assert o.sizes["obs"] == 4 + i
        one = xlatda.assimilate(cases.isel(case=i), o, model, members=6, init_std=0.5,
                                seed=case_seed(7, i))
        np.testing.assert_array_equal(out.x.isel(case=i).values, one.x.values)
    other = assimilate_cases(cases, obs, model, members=6, init_std=0.5, seed=8)
    assert not np.allclose(other.x.values, out.x.values)


def test_obs_without_case_dim_and_ensemble_states(data, cases, model):
    obs = xlatda.obs.sample_points(data.isel(time=[30]), n=5, error_std=1.0, seed=0)
    rng = np.random.default_rng(0)
    ens = cases.expand_dims(member=4).copy()
    ens["x"] = ens.x + xr.DataArray(rng.normal(size=ens.x.shape), dims=ens.x.dims)
    ens = ens.transpose("case", "member", "k")
    lazy = assimilate_cases(ens.chunk(case=2), obs, model, method="ensrf")
    assert lazy.x.sizes["member"] == 4
    xr.testing.assert_identical(lazy.compute(), assimilate_cases(ens, obs, model,
                                                                 method="ensrf"))


def test_physical_space_letkf(data, cases, obs):
    lazy = assimilate_cases(cases.chunk(case=3), obs.chunk(case=3), None, method="letkf",
                            members=6, init_std=1.0, radius=4)
    eager = assimilate_cases(cases, obs, None, method="letkf", members=6, init_std=1.0,
                             radius=4)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_refuses_bad_input(cases, obs, model):
    with pytest.raises(ConfigError, match="case dimension"):
        assimilate_cases(cases, obs, model, dim="window", members=4, init_std=1.0)
    with pytest.raises(ConfigError, match="cases along"):
        assimilate_cases(cases, obs.isel(case=[0, 1]), model, members=4, init_std=1.0)
    with pytest.raises(ConfigError, match="needs an ensemble"):
        assimilate_cases(cases, obs, model)
    with pytest.raises(ConfigError, match="single analyses"):
        assimilate_cases(cases, obs, model, method="4denvar")
    with pytest.raises(xlatda.XlatdaError, match=r"unknown|known"):
        assimilate_cases(cases, obs, model, method="nope")
