"""Encode and forecast on a dask.distributed cluster.

Locally this starts a 2-worker LocalCluster. On a pangeo deployment, point the
Client at your cluster instead, e.g. with dask-gateway::

    from dask_gateway import Gateway
    cluster = Gateway().new_cluster(); cluster.scale(8); client = cluster.get_client()

or dask-jobqueue (``SLURMCluster(cores=8, memory="32GB"); cluster.scale(jobs=4)``).
The model travels to the workers as a small state dict (JSON config and numpy
arrays), never as a pickled torch module; each task sets its torch threads
from ``xlatda.set_options(torch_threads=...)``.

Run: ``python examples/dask_cluster.py``.
"""

import numpy as np
from distributed import Client, LocalCluster

import xlatda

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        ds = xlatda.datasets.lorenz96(n=40, steps=400, seed=0)
        model = xlatda.fit(ds, encoder="pca", latent_dim=20, progress=False)
        lazy = ds.chunk(time=100)
        with xlatda.set_options(torch_threads=1):
            z = lazy.lda.encode(model)  # lazy: nothing computed yet
            back = z.lda.decode(model)
        err = float(np.abs(back.x - ds.x).max().compute())
        print(f"{z.z.data.npartitions} chunks encoded on {len(client.scheduler_info()['workers'])}"
              f" workers; max reconstruction error {err:.2f}")
