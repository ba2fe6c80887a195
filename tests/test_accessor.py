"""The .lda accessor, options and the error hierarchy."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda import errors
from xlatda.accessor import DataArrayLdaAccessor, DatasetLdaAccessor
from xlatda.errors import ConfigError, DeviceError, UnknownNameError, XlatdaError
from xlatda.options import OPTIONS, resolve_device, resolve_dtype


def grid():
    return xr.Dataset(
        {"h": (("time", "lat", "lon"), np.arange(24.0).reshape(2, 3, 4), {"units": "m"})},
        coords={"time": ("time", [0.0, 1.0], {"axis": "T"}),
                "lat": ("lat", [0.0, 10.0, 20.0], {"standard_name": "latitude"}),
                "lon": ("lon", [0.0, 90.0, 180.0, 270.0], {"standard_name": "longitude"})},
    )


def test_accessor_registered_and_stateless():
    ds = grid()
    assert isinstance(ds.lda, DatasetLdaAccessor)
    assert isinstance(ds.h.lda, DataArrayLdaAccessor)
    # No state: the accessor holds only the object it was built on.
    assert set(vars(ds.lda)) == {"_obj"}


def test_dataarray_goes_through_dataset():
    ds = grid()
    t1 = ds.lda.to_tensor()
    t2 = ds.h.lda.to_tensor()
    torch.testing.assert_close(t1, t2)
    assert ds.h.lda.layout().variables == ("h",)


def test_accessor_observe_and_rmse():
    ds = grid()
    obs = xr.Dataset({"h": ("obs", [0.0], {"error_std": 1.0})},
                     coords={"lat": ("obs", [5.0]), "lon": ("obs", [45.0]),
                             "time": ("obs", [0.5])})
    # Bilinear in space, linear in time: mean of the 8 surrounding values.
    expected = np.mean([ds.h.values[t, i, j] for t in (0, 1) for i in (0, 1) for j in (0, 1)])
    assert ds.lda.observe(obs).h.item() == pytest.approx(expected)
    r = ds.h.lda.rmse(ds.h + 1.0)
    assert isinstance(r, xr.DataArray)
    assert float(r) == pytest.approx(1.0)


def test_accessor_signatures_are_explicit():
    # No *args/**kwargs forwarding on the user-facing methods that take settings.
    for name in ("sample_points", "coarsen_obs", "sparsify_obs", "to_observations"):
        params = inspect.signature(getattr(DatasetLdaAccessor, name)).parameters
        assert not any(p.kind == p.VAR_KEYWORD for p in params.values()), name


def test_set_options_context_and_validation():
    before = dict(OPTIONS)
    with xlatda.set_options(progress=False, dtype="float64"):
        assert OPTIONS["progress"] is False
        assert resolve_dtype(None) == torch.float64
    assert OPTIONS == before
    with pytest.raises(ConfigError, match="known options"):
        xlatda.set_options(colour=True)
    with pytest.raises(ConfigError, match="must be"):
        xlatda.set_options(dtype="float16")


def test_import_changes_nothing_global():
    # Importing xlatda sets no xarray option and no warnings filter of its own.
    assert xr.get_options()["keep_attrs"] == "default"


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_cuda_refused_without_device():
    with pytest.raises(DeviceError, match="device='cpu'"):
        resolve_device("cuda")


def test_error_hierarchy():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, XlatdaError)
        if cls is not XlatdaError:
            builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b is not object]
            assert builtin, f"{name} derives from no builtin"
    err = UnknownNameError("unknown method 'x'; known: 'etkf'")
    assert str(err) == "unknown method 'x'; known: 'etkf'"  # no KeyError quoting
    assert isinstance(err, KeyError)
