"""Exactness audit (session audit2): resumes, layouts and seeds give the same bits.

Each test here failed before the fix it names in its docstring.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import xlatda
from xlatda.dynamics import Lorenz96

CYCLE = importlib.import_module("xlatda.cycle")


@pytest.fixture(scope="module")
def l96():
    truth = xlatda.datasets.lorenz96(n=8, steps=10, seed=0)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, 9)), n=4, error_std=0.5, seed=1)
    return truth, obs


def _stored(res) -> dict[str, np.ndarray]:
    out = {"analysis": res.analysis.x.values, "background": res.background.x.values}
    out.update({f"diag.{k}": v.values for k, v in res.diagnostics.data_vars.items()})
    return out


def _assert_same(a, b) -> None:
    sa, sb = _stored(a), _stored(b)
    assert sa.keys() == sb.keys()
    bad = {k: float(np.nanmax(np.abs(sa[k] - sb[k]))) for k in sa
           if not np.array_equal(sa[k], sb[k], equal_nan=True)}
    assert not bad, f"differ (max |diff|): {bad}"


class _Stop(Exception):
    pass


def _stop_after(n: int, monkeypatch) -> None:
    """Interrupt the cycle (an exception) right after its ``n``-th store write."""
    orig, count = CYCLE.write_window, [0]

    def write(*args, **kwargs):
        orig(*args, **kwargs)
        count[0] += 1
        if count[0] == n:
            raise _Stop

    monkeypatch.setattr(CYCLE, "write_window", write)


@pytest.mark.parametrize(("k", "lag"), [(1, 0), (4, 2)])
def test_letkf_resume_is_bit_identical(l96, tmp_path, monkeypatch, k, lag):
    """LETKF's analysis ensemble came out column-major (a view of its channel-1
    transform) and was carried so into the next analysis, whose member means then
    rounded differently from those of the row-major ensemble a resume reads back:
    resumed analyses differed from the uninterrupted run by up to 3.6e-15 (k=2).
    Fixed by carrying a contiguous ensemble (xlatda/cycle.py)."""
    truth, obs = l96
    kw = dict(method="letkf", members=6, init_std=1.0, progress=False, seed=3, radius=3,
              lag=lag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), **kw)
        # a run over the first k observation times, then the whole span
        times = np.unique(obs.time.values)
        first = obs.where(obs.time <= times[k - 1], drop=True)
        xlatda.cycle(truth.isel(time=0), first, Lorenz96(n=8), store=tmp_path / "t.zarr", **kw)
        _assert_same(xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8),
                                  store=tmp_path / "t.zarr", **kw), full)
        # a run interrupted after its k-th write, then rerun
        with monkeypatch.context() as m:
            _stop_after(k, m)
            with pytest.raises(_Stop):
                xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8),
                             store=tmp_path / "i.zarr", **kw)
        _assert_same(xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8),
                                  store=tmp_path / "i.zarr", **kw), full)


# -- a cycle store is resumed only by the model that wrote it (by content) -----------
def _resume_with(first_model, then_model, obs, truth, tmp_path):
    times = np.unique(obs.time.values)
    first = obs.where(obs.time <= times[3], drop=True)
    kw = dict(method="etkf", members=6, init_std=1.0, progress=False)
    store = tmp_path / "c.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xlatda.cycle(truth.isel(time=0), first, first_model, store=store, **kw)
        return xlatda.cycle(truth.isel(time=0), obs, then_model, store=store, **kw)


@pytest.fixture(scope="module")
def linear_model():
    truth = xlatda.datasets.lorenz96(n=8, steps=119, seed=0)
    return xlatda.fit(truth, encoder="pca", latent_dim=4, dynamics="linear", progress=False)


def test_a_store_is_not_resumed_by_a_model_edited_in_place(l96, linear_model, tmp_path):
    """The store knew a latent model by its ``model_id`` (set once, at random): after
    ``model.dynamics.A`` was halved in place the store resumed, its first 4 analyses
    from the old dynamics, the next 4 from the new. Now the weights' content is part
    of the experiment (xlatda/cycle_store.py)."""
    import copy

    import torch

    from xlatda.errors import StoreMismatchError

    truth, obs = l96
    edited = copy.deepcopy(linear_model)
    with torch.no_grad():
        edited.dynamics.A.mul_(0.5)
    assert edited.model_id == linear_model.model_id
    with pytest.raises(StoreMismatchError, match="model"):
        _resume_with(linear_model, edited, obs, truth, tmp_path)
    # the same model (and a deep copy of it) still resumes
    same = _resume_with(linear_model, copy.deepcopy(linear_model), obs, truth, tmp_path / "b")
    assert same.analysis.sizes["time"] == 8


def test_a_store_is_not_resumed_by_another_step_function(l96, tmp_path):
    """A physical model was known by its class and scalar attributes only: a
    CallableModel wrapping another function (same dt, same shape) resumed the
    store of the first."""
    from xlatda.dynamics import CallableModel
    from xlatda.errors import StoreMismatchError

    truth, obs = l96
    l96_model = Lorenz96(n=8)

    def step(x, dt, theta=None):
        return l96_model.step(x, dt)

    def damped(x, dt, theta=None):
        return 0.9 * l96_model.step(x, dt)

    with pytest.raises(StoreMismatchError, match="model"):
        _resume_with(CallableModel(step, (8,), 0.05), CallableModel(damped, (8,), 0.05), obs,
                     truth, tmp_path)
    same = _resume_with(CallableModel(step, (8,), 0.05), CallableModel(step, (8,), 0.05), obs,
                        truth, tmp_path / "b")
    assert same.analysis.sizes["time"] == 8


# -- the PCA encoder's cached projection follows the content of its buffers ---------
@pytest.mark.parametrize("edit", ["data", "numpy", "weights"])
def test_pca_encode_follows_edits_its_version_counter_misses(edit):
    """PCA.encode kept its projection while the buffers' version counters stood
    still; an edit through ``.data``, through ``.numpy()`` or of the area weights
    changes no counter, so encode used the old EOFs (the latents did not change at
    all). Now the projection is made from the buffers at every call."""
    import torch

    truth = xlatda.datasets.lorenz96(n=8, steps=119, seed=0)
    model = xlatda.fit(truth, encoder="pca", latent_dim=4, progress=False)
    enc = model.encoder
    x = torch.as_tensor(truth.x.values[:5], dtype=torch.float32).reshape(5, 1, 8)
    with torch.inference_mode():
        enc.encode(x)  # fills the cache
    if edit == "data":
        enc.components.data.mul_(2.0)
    elif edit == "numpy":
        enc.components.numpy()[:] *= 2.0
    else:
        enc.weights.numpy()[:] *= 2.0
    with torch.inference_mode():
        got = enc.encode(x)
    # what the formula gives for the edited buffers
    w = enc.weights
    want = (x.reshape(5, -1) - enc.mean.reshape(1, -1)) @ (enc.components * w).T
    if enc.whiten:
        want = want / enc._scale()
    assert torch.equal(got, want)


# -- a store interrupted inside a window shows its committed windows only -------------
@pytest.mark.parametrize("group", ["background", "diagnostics", "resume"])
def test_open_result_shows_only_committed_windows(l96, tmp_path, monkeypatch, group):
    """A run stopped while appending its 3rd window's ``group`` left the groups at
    different lengths (4 analyses, 3 backgrounds; or 4 of everything with 3
    windows committed) and open_result returned them as they were: an analysis
    without its background, diagnostics or resume point read as a result. Now
    open_result cuts every group back to the committed windows (what a rerun
    resumes from)."""
    import xarray as xr

    truth, obs = l96
    kw = dict(method="etkf", members=6, init_std=1.0, progress=False, seed=3)
    orig, count = xr.Dataset.to_zarr, [0]

    def to_zarr(self, *args, group=None, **kwargs):
        if group == group_name and "append_dim" in kwargs:
            count[0] += 1
            if count[0] == 3:
                raise _Stop
        return orig(self, *args, group=group, **kwargs)

    group_name = group
    store = tmp_path / "c.zarr"
    with monkeypatch.context() as m:
        m.setattr(xr.Dataset, "to_zarr", to_zarr)
        with pytest.raises(_Stop):
            xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), store=store, **kw)
    part = xlatda.cycle_store.open_result(store)
    sizes = {name: getattr(part, name).sizes["time"]
             for name in ("analysis", "background", "diagnostics")}
    assert sizes == {"analysis": 3, "background": 3, "diagnostics": 3}, sizes
    full = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), **kw)
    np.testing.assert_array_equal(part.analysis.x.values, full.analysis.x.values[:3])
    _assert_same(xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), store=store, **kw), full)


# -- the guide's reproducibility list (docs/guide.md, "what gives the same bits") -----
def test_chunking_scheduler_and_progress_leave_the_bits(l96, linear_model):
    """Guards the guide's list: dask-backed observations and background (chunked in
    space), the threaded scheduler and progress bars give the eager run's bits."""
    import dask

    truth, obs = l96
    kw = dict(method="etkf", progress=False, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = xlatda.cycle(truth.isel(time=0), obs, linear_model, **kw)
        chunked = xlatda.cycle(truth.chunk({"k": 4}).isel(time=0), obs.chunk({"obs": 5}),
                               linear_model, **kw)
        with dask.config.set(scheduler="threads"):
            threaded = xlatda.cycle(truth.chunk({"k": 4}).isel(time=0), obs.chunk({"obs": 7}),
                                    linear_model, **kw)
        bars = xlatda.cycle(truth.isel(time=0), obs, linear_model, **{**kw, "progress": True})
    for other in (chunked, threaded, bars):
        _assert_same(other, base)


def test_sinr_affine_map_follows_a_data_edit_of_its_weights():
    """SINR's affine caches were keyed by each parameter's data pointer and version
    counter; ``p.data.mul_(2)`` moves neither, so ``affine_map`` (and the exact
    encode and decode_at built on it) kept the old weights' map. Now the key is a
    digest of the weights' content."""
    import torch

    from xlatda.encoders.sinr import SINR

    grid = {"kind": "points", "lat": [0.0, 45.0, -45.0], "lon": [0.0, 90.0, 200.0]}
    torch.manual_seed(0)
    enc = SINR(1, (3,), latent_dim=2, grid=grid, hidden=4, depth=2, max_freq=1)
    enc.fit(torch.randn(2, 1, 3), epochs=1, progress=False)
    points = torch.tensor([[10.0, 20.0], [-30.0, 100.0]])
    channel = torch.zeros(2, dtype=torch.long)
    enc.affine_map()
    enc.affine_map(points, channel)
    next(enc.parameters()).data.mul_(2.0)
    got = [enc.affine_map(), enc.affine_map(points, channel)]
    enc._affine_cache.clear()
    want = [enc.affine_map(), enc.affine_map(points, channel)]
    for (o1, m1), (o2, m2) in zip(got, want):
        assert torch.equal(o1, o2) and torch.equal(m1, m2)
