"""The same calls on a dask.distributed LocalCluster (2 worker processes)."""

from __future__ import annotations

import numpy as np
import pytest

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
