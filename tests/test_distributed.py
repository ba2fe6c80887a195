"""The same calls on a dask.distributed LocalCluster (2 worker processes)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import xarray as xr

import xlatda

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, worker_dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_encode_decode_forecast_on_cluster(client):
    ds = xlatda.datasets.lorenz96(n=16, steps=200, seed=0)
    model = xlatda.fit(ds, encoder="pca", latent_dim=8, dynamics="ode", epochs=2,
                       progress=False, dynamics_options={"width": 16, "depth": 1})
    eager_z = xlatda.encode(ds, model)
    with xlatda.set_options(torch_threads=1):
        lazy_z = xlatda.encode(ds.chunk(time=50), model)
        fields = xlatda.decode(lazy_z, model)
        fc = xlatda.forecast(ds.isel(time=slice(0, 8)).chunk(time=2), model, steps=3)
    # The model travels as a small state dict, so the graph stays small.
    assert lazy_z.z.data.npartitions == 5
    z, f, fc = client.compute([lazy_z.z, fields.x, fc.x], sync=True)
    np.testing.assert_allclose(z.values, eager_z.z.values, atol=1e-5)
    np.testing.assert_allclose(f.values, xlatda.decode(eager_z, model).x.values, atol=1e-4)
    np.testing.assert_allclose(
        fc.values, xlatda.forecast(ds.isel(time=slice(0, 8)), model, steps=3).x.values,
        atol=1e-4)
    # Work ran on both workers.
    assert len(client.scheduler_info()["workers"]) == 2


def test_encode_to_zarr_on_cluster(client, tmp_path):
    from xlatda.streaming import encode_to_zarr, stream_status

    ds = xlatda.datasets.lorenz96(n=16, steps=199, seed=0)
    model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    model.save(tmp_path / "m.zarr")
    ds.chunk(time=25).to_zarr(tmp_path / "src.zarr", zarr_format=3, consolidated=False)
    eager = xlatda.encode(ds, model).z.values
    # Source and model as paths: each worker opens both itself.
    with distributed.get_task_stream(client) as ts:
        out = encode_to_zarr(tmp_path / "src.zarr", tmp_path / "m.zarr", tmp_path / "a.zarr",
                             chunk=25, progress=False, client=client)
    np.testing.assert_allclose(out.z.values, eager, atol=1e-5)
    assert stream_status(tmp_path / "a.zarr")["complete"]
    # The eight regions ran as eight tasks, on both workers.
    regions = [t for t in ts.data if str(t["key"]).startswith("xlatda-encode-region")]
    assert len(regions) == 8
    assert len({t["worker"] for t in regions}) == 2

    # A lazy Dataset source whose fourth chunk fails to read: the regions that
    # were written stay written, the store says it is incomplete, and the rerun
    # (on the cluster, model as a LatentModel) writes only the rest.
    lazy = xr.open_zarr(tmp_path / "src.zarr", consolidated=False)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3:
            raise OSError("simulated read error")
        return block

    broken = lazy.assign(x=(lazy.x.dims, lazy.x.data.map_blocks(boom, dtype=lazy.x.dtype),
                            lazy.x.attrs))
    with pytest.raises(OSError, match="simulated"):
        encode_to_zarr(broken, model, tmp_path / "b.zarr", progress=False, client=client)
    # Regions already running when the error arrived may still finish (and mark
    # themselves): wait until the cluster is idle before reading the status.
    deadline = time.time() + 30
    while any(client.processing().values()) and time.time() < deadline:
        time.sleep(0.1)
    status = stream_status(tmp_path / "b.zarr")
    assert not status["complete"] and 3 in status["pending"]
    seen = []
    out = encode_to_zarr(lazy, model, tmp_path / "b.zarr", progress=seen.append, client=client)
    # Only regions not yet written run again (a region still finishing when the
    # status was read is skipped by its task, which finds its marker).
    rerun = sorted(info["region"] for info in seen)
    assert 3 in rerun and set(rerun) <= set(status["pending"])
    np.testing.assert_allclose(out.z.values, eager, atol=1e-5)


def test_assimilate_cases_on_cluster(client, tmp_path):
    from xlatda.batch import assimilate_cases, stack_obs

    ds = xlatda.datasets.lorenz96(n=16, steps=60, seed=0)
    model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    model.save(tmp_path / "m.zarr")
    idx = [10, 20, 30, 40]
    cases = ds.isel(time=idx).swap_dims(time="case")
    obs = stack_obs([xlatda.obs.sample_points(ds.isel(time=[t]), n=6, error_std=1.0, seed=t)
                     for t in idx])
    eager = assimilate_cases(cases, obs, model, members=6, init_std=0.5)
    with xlatda.set_options(torch_threads=1):
        lazy = assimilate_cases(cases.chunk(case=1), obs.chunk(case=1), str(tmp_path / "m.zarr"),
                                members=6, init_std=0.5)
    out = client.compute(lazy, sync=True)
    xr.testing.assert_identical(out, eager)
