"""xlatda.assimilate / xlatda.cycle on xarray: exactness, twins, parameters, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import ConfigError, ObservationError, UnknownNameError


def generic_ensemble(n=6, members=200, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    cov = a @ a.T / n + 0.5 * np.eye(n)
    mean = rng.normal(size=n)
    ens = rng.multivariate_normal(mean, cov, size=members)
    ds = xr.Dataset({"x": (("member", "k"), ens, {"units": "1"})},
                    coords={"member": np.arange(members), "k": np.arange(n)})
    return ds


def point_obs(positions, values, std):
    return xr.Dataset({"x": ("obs", np.asarray(values, float), {"error_std": std})},
                      coords={"k": ("obs", np.asarray(positions, float))})


def exact_kalman(ens, H, y, r_std):
    xb = ens.mean(0)
    P = np.cov(ens.T)
    R = np.diag(np.full(len(y), r_std**2))
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    return xb + K @ (y - H @ xb), P - K @ H @ P


def test_etkf_single_analysis_is_exact_kalman():
    ds = generic_ensemble()
    obs = point_obs([0.0, 2.5, 4.0], [1.0, -0.5, 0.3], 0.7)
    ana = xlatda.assimilate(ds, obs, method="etkf")
    ens = ds.x.values
    H = np.zeros((3, 6))
    H[0, 0] = 1
    H[1, 2] = H[1, 3] = 0.5
    H[2, 4] = 1
    mean, cov = exact_kalman(ens, H, obs.x.values, 0.7)
    np.testing.assert_allclose(ana.x.mean("member").values, mean, atol=1e-10)
    np.testing.assert_allclose(np.cov(ana.x.values.T), cov, atol=1e-10)
    assert ana.x.attrs == ds.x.attrs


def test_3dvar_single_analysis_is_blue():
    ds = generic_ensemble().isel(member=0)
    obs = point_obs([1.0, 3.0], [0.5, -1.0], 0.5)
    ana = xlatda.assimilate(ds, obs, method="3dvar", b_std=2.0)
    H = np.zeros((2, 6))
    H[0, 1] = H[1, 3] = 1
    B = 4.0 * np.eye(6)
    R = 0.25 * np.eye(2)
    xb = ds.x.values
    K = B @ H.T @ np.linalg.inv(H @ B @ H.T + R)
    np.testing.assert_allclose(ana.x.values.ravel(), xb + K @ (obs.x.values - H @ xb), atol=1e-9)


def test_errors_before_work():
    ds = generic_ensemble()
    obs = point_obs([0.0], [1.0], 1.0)
    with pytest.raises(UnknownNameError, match=r"known: .*etkf"):
        xlatda.assimilate(ds, obs, method="kalman")
    with pytest.raises(ConfigError, match="b_std"):
        xlatda.assimilate(ds.isel(member=0), obs, method="3dvar")
    with pytest.raises(ConfigError, match="init_std"):
        xlatda.assimilate(ds.isel(member=0), obs, method="etkf", members=10)
    with pytest.raises(ConfigError, match="cycle"):
        xlatda.assimilate(ds, obs, method="4denvar")


def l96_twin(cycles=120, seed=1):
    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
    k = np.tile(np.arange(40.0), cycles)
    t = np.repeat(truth.time.values[1:], 40)
    rng = np.random.default_rng(seed)
    vals = truth.x.isel(time=slice(1, None)).values.ravel() + rng.normal(size=k.size)
    obs = xr.Dataset({"x": ("obs", vals, {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    return truth, obs


def rmse_after(result, truth, burn=40):
    a = result.analysis.x.mean("member")
    err = (a - truth.x.sel(time=a.time)).isel(time=slice(burn, None))
    return float(np.sqrt((err**2).mean()))


@pytest.mark.parametrize("method, settings, members, tol",
                         [("etkf", {"inflation": 1.02}, 20, 0.3),
                          ("letkf", {"inflation": 1.04, "radius": 4}, 10, 0.35),
                          ("3dvar", {"b_std": 0.5}, 1, 0.6)])
def test_lorenz96_twin(method, settings, members, tol):
    truth, obs = l96_twin()
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=members,
                       init_std=1.0, seed=0, progress=False, **settings)
    assert res.analysis.sizes["time"] == 120
    assert rmse_after(res, truth) < tol
    # Innovations are larger than residuals: the analysis moved towards the obs.
    d = res.diagnostics
    assert float(d.residual_rms.mean()) < float(d.innovation_rms.mean())


def test_4denvar_estimates_forcing():
    truth, obs = l96_twin(cycles=40, seed=3)
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="4denvar", window=5,
                       members=30, init_std=1.0, params={"forcing": (7.0, 1.0)}, seed=0,
                       progress=False, inflation=1.02)
    theta = res.parameters.theta.isel(time=-1, param=0)
    mean, spread = float(theta.mean()), float(theta.std())
    assert abs(mean - 8.0) < 0.8  # within 10 %
    assert abs(mean - 8.0) < 4 * spread + 0.05  # spread covers the truth
    assert rmse_after(res, truth, burn=10) < 0.6


def test_store_resumes_without_duplicates(tmp_path):
    truth, obs = l96_twin(cycles=16)
    kwargs = dict(method="etkf", members=10, init_std=1.0, seed=5, progress=False,
                  inflation=1.02)
    full = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), **kwargs)
    store = tmp_path / "run.zarr"
    first = obs.where(obs.time <= truth.time.values[8], drop=True)
    xlatda.cycle(truth.isel(time=0), first, Lorenz96(), store=store, **kwargs)
    # A kill between group writes leaves the analysis group one entry ahead.
    import zarr

    root = zarr.open_group(str(store), mode="a")
    for _, arr in root["diagnostics"].arrays():
        assert arr.metadata.dimension_names[0] == "time"
        arr.resize((arr.shape[0] - 1, *arr.shape[1:]))
    resumed = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), store=store, **kwargs)
    assert resumed.analysis.sizes["time"] == 16
    np.testing.assert_array_equal(resumed.analysis.time.values, full.analysis.time.values)
    np.testing.assert_allclose(resumed.analysis.x.values, full.analysis.x.values, atol=1e-12)


def test_store_refuses_other_experiment(tmp_path):
    truth, obs = l96_twin(cycles=4)
    store = tmp_path / "run.zarr"
    xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="etkf", members=5, init_std=1.0,
                 progress=False, store=store)
    with pytest.raises(ConfigError, match="another experiment"):
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="4denvar", members=5,
                     init_std=1.0, progress=False, store=store, params={"forcing": (8, 1)})


def test_obs_before_background_refused():
    truth, obs = l96_twin(cycles=4)
    with pytest.raises(ObservationError, match="earlier than the background"):
        xlatda.cycle(truth.isel(time=2), obs, Lorenz96(), members=5, init_std=1.0,
                     progress=False)


def test_off_step_times_refused():
    truth, obs = l96_twin(cycles=4)
    obs = obs.assign_coords(time=obs.time + 0.01)
    with pytest.raises(ObservationError, match="whole number of model steps"):
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), members=5, init_std=1.0,
                     progress=False)


def test_generator_is_local():
    state = torch.random.get_rng_state()
    ds = generic_ensemble(members=20)
    xlatda.assimilate(ds, point_obs([1.0], [0.0], 1.0), method="enkf", seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_latent_etkf_equals_physical_with_full_rank_pca():
    truth = xlatda.datasets.lorenz96(n=10, steps=200, seed=4)
    model = xlatda.fit(truth, encoder="pca", latent_dim=10, progress=False, dtype="float64")
    ens = xlatda.datasets.lorenz96(n=10, steps=1, seed=4, members=30, perturbation=1.0)
    ens = ens.isel(time=0)
    obs = point_obs([0.5, 3.0, 7.25], [1.0, 2.0, -1.0], 0.8)
    phys = xlatda.assimilate(ens, obs, method="etkf", space="physical")
    lat = xlatda.assimilate(ens, obs, model, method="etkf", space="latent")
    np.testing.assert_allclose(lat.x.values, phys.x.values, atol=1e-6)


def test_latent_cycle_beats_free_run():
    truth = xlatda.datasets.lorenz96(n=16, steps=600, seed=6)
    train, test = truth.isel(time=slice(0, 500)), truth.isel(time=slice(500, None))
    model = xlatda.fit(train, encoder="pca", latent_dim=16, dynamics="ode",
                       uncertainty="diagonal", epochs=5, progress=False,
                       dynamics_options={"width": 64, "depth": 2})
    # Every site observed: with a briefly trained ODE, half the sites are not
    # enough to constrain the others (see the issue notes).
    k = np.tile(np.arange(0.0, 16.0), 60)
    t = np.repeat(test.time.values[1:61], 16)
    rng = np.random.default_rng(0)
    vals = test.x.values[1:61].ravel()  # time-major like k and t
    obs = xr.Dataset({"x": ("obs", vals + rng.normal(size=k.size), {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    res = xlatda.cycle(test.isel(time=0), obs, model, method="etkf", members=20, init_std=0.5,
                       seed=0, progress=False, inflation=1.05)
    ana = res.analysis.x.mean("member")
    free = xlatda.forecast(test.isel(time=[0]), model, steps=60).x.isel(time=0, drop=True)
    truth_at = test.x.isel(time=slice(1, 61)).values  # analysis times = leads 1..60
    rmse_ana = float(np.sqrt(((ana.values - truth_at) ** 2).mean()))
    rmse_free = float(np.sqrt(((free.isel(lead=slice(1, None)).values - truth_at) ** 2).mean()))
    assert rmse_ana < 0.5 * rmse_free


def test_vaevar_linear_decoder_equals_3dvar_on_xarray():
    from xlatda.methods import DenseCovariance

    ds = generic_ensemble(n=6).isel(member=0)
    obs = point_obs([1.0, 3.5, 5.0], [0.5, -1.0, 2.0], 0.5)
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    decoder = torch.nn.Linear(4, 6, bias=False).double()
    with torch.no_grad():
        decoder.weight.copy_(A)
    vae = xlatda.assimilate(ds, obs, method="vaevar", space="physical", decoder=decoder,
                            std=torch.ones(6, dtype=torch.float64), latent_dim=4,
                            iterations=200)
    b = DenseCovariance(A @ A.T + 1e-9 * torch.eye(6, dtype=torch.float64))
    var = xlatda.assimilate(ds, obs, method="3dvar", b=b)
    np.testing.assert_allclose(vae.x.values, var.x.values, atol=1e-5)


def test_jacobian_initial_ensemble_matches_b_z():
    from xlatda.initial import jacobian_perturbations
    from xlatda.spaces import LatentSpace

    truth = xlatda.datasets.lorenz96(n=10, steps=200, seed=4)
    model = xlatda.fit(truth, encoder="pca", latent_dim=4, progress=False, dtype="float64")
    space = LatentSpace(model, 0)
    z = space.from_fields(model.layout.to_tensor(truth.isel(time=[0]), dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    pert = jacobian_perturbations(space, z, 20000, 0.3, gen)
    # Linear decoder: J is the EOF matrix, so B_z = 0.09 J⁺ J⁺ᵀ exactly.
    jac = torch.autograd.functional.jacobian(
        lambda v: model.encoder.decode(v[None]).reshape(-1), z[0])
    pinv = torch.linalg.pinv(jac)
    expected = 0.09 * pinv @ pinv.T
    np.testing.assert_allclose(np.cov(pert.numpy().T), expected.numpy(), rtol=0.05,
                               atol=0.05 * float(expected.diagonal().max()))
    with pytest.raises(ConfigError, match="space='latent'"):
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, 3)), n=3, error_std=1.0)
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=10), members=4, init_std=1.0,
                     init="jacobian", progress=False)


def test_parameter_of_the_initial_state_from_a_joint_prior():
    """θ shifts the initial state; members drawn jointly with θ let the analysis find it.

    Background members x_j = x* + (θ_j - θ*) (all sites), θ_j ~ N(0, 1), θ* = 0.7;
    identity dynamics (dz/dt = 0, a LatentODE without parameters), all 8 sites observed
    with error 0.1: the linear-Gaussian posterior of θ has mean ≈ θ* and std ≈ 0.1/√8.
    """
    truth = xlatda.datasets.lorenz96(n=8, steps=30, seed=0)
    model = xlatda.fit(truth, encoder="pca", latent_dim=8, dynamics="ode", epochs=1,
                       progress=False,
                       dynamics_options={"width": 8, "depth": 1, "val_fraction": 0})
    for p in model.dynamics.parameters():
        p.data.zero_()  # dz/dt = 0: forecasts keep the state
    assert model.dynamics.n_params == 0
    rng = np.random.default_rng(1)
    members, theta_true = 60, 0.7
    theta = rng.normal(0.0, 1.0, members)
    x0 = truth.x.isel(time=0).values
    ens = x0[None] + (theta - theta_true)[:, None]
    background = truth.isel(time=[0]).expand_dims(member=members).copy()
    background["x"] = (("member", "time", "k"), ens[:, None, :])
    t1 = truth.time.values[1]
    obs = xr.Dataset({"x": ("obs", x0 + rng.normal(0, 0.1, 8), {"error_std": 0.1})},
                     coords={"k": ("obs", np.arange(8.0)), "time": ("obs", np.repeat(t1, 8))})
    res = xlatda.cycle(background.isel(time=0), obs, model, method="etkf",
                       params={"shift": theta.tolist()}, noise=False, seed=0, progress=False)
    np.testing.assert_allclose(res.parameters.theta_background.isel(time=0, param=0).values,
                               theta)  # carried unchanged by dynamics that take no θ
    post = res.parameters.theta.isel(time=0, param=0)
    assert abs(float(post.mean()) - theta_true) < 3 * 0.1 / np.sqrt(8)
    assert 0.7 * 0.1 / np.sqrt(8) < float(post.std()) < 1.4 * 0.1 / np.sqrt(8)
    with pytest.raises(xlatda.errors.ConfigError, match="one value per member"):
        xlatda.cycle(background.isel(time=0), obs, model, method="etkf",
                     params={"shift": [0.0, 1.0]}, progress=False)


def test_vae4dvar_cycle_matches_a_direct_4dvar_minimisation():
    """With the identity as decoder, 4D VAE-Var is 4D-Var with B = std² I / λ.

    The first window's analysis equals the minimiser of
    J(x0) = λ/2 ‖(x0 - xb)/std‖² + ½ Σ_t ‖(H M_t(x0) - y_t)/σ‖², found here by
    L-BFGS on x0 directly through the same (differentiable) Lorenz-96 model.
    """
    from xlatda.dynamics import Lorenz96

    truth, obs = l96_twin(cycles=8, seed=2)
    dyn = Lorenz96(n=40)
    std, lam = 0.8, 1.0
    bg = truth.isel(time=0).copy()
    bg["x"] = bg.x + 0.5
    res = xlatda.cycle(bg, obs, dyn, method="vae4dvar", window=4, decoder=lambda w: w,
                       std=std, latent_dim=40, lam=lam, progress=False)
    assert res.analysis.sizes["time"] == 8
    # reference: minimise J over x0 at the first observation time
    t_obs = np.unique(obs.time.values)[:4]
    xb0 = torch.as_tensor(bg.x.values, dtype=torch.float64)
    xb0 = dyn.step(xb0[None], dyn.dt)[0]  # background at the window start
    ys = [torch.as_tensor(obs.x.values[obs.time.values == t]) for t in t_obs]
    x0 = xb0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x0], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        j = 0.5 * lam * (((x0 - xb0) / std) ** 2).sum()
        cur = x0[None]
        for i, y in enumerate(ys):
            if i:
                cur = dyn.step(cur, dyn.dt)
            j = j + 0.5 * ((cur[0] - y) ** 2).sum()
        j.backward()
        return j

    opt.step(closure)
    ana0 = res.analysis.x.isel(time=0, member=0).values
    np.testing.assert_allclose(ana0, x0.detach().numpy(), atol=2e-3)
    with pytest.raises(xlatda.errors.ConfigError, match="window"):
        xlatda.assimilate(bg, obs, dyn, method="vae4dvar", decoder=lambda w: w, std=std,
                          latent_dim=40)
