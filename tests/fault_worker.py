"""A writer for the SIGKILL cases of :mod:`tests.fault_cases`.

``python -m tests.fault_worker save DIR`` saves two models over ``DIR/m.zarr``
in turn, forever; ``python -m tests.fault_worker encode DIR`` encodes
``DIR/src.zarr`` with the model ``DIR/m.zarr`` into ``DIR/z.zarr`` region by
region; ``python -m tests.fault_worker cycle DIR`` runs :func:`cycle_run` into
``DIR/c.zarr``. Each prints ``ready`` once it has started writing; the test
then kills it with SIGKILL.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def cycle_run(store: Path | None = None, analyses: int = 40):
    """A Lorenz-96 ETKF cycle (8 sites, ``analyses`` analysis times), optionally stored."""
    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    truth = xlatda.datasets.lorenz96(n=8, steps=analyses, seed=0)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=4, error_std=0.5, seed=1)
    return xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), method="etkf", members=5,
                        init_std=1.0, seed=2, progress=False, store=store)


def main(task: str, folder: str) -> None:
    warnings.simplefilter("ignore")
    import xlatda

    tmp = Path(folder)
    if task == "save":
        ds = xlatda.datasets.lorenz96(n=8, steps=119, seed=0)
        models = [xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False),
                  xlatda.fit(ds.isel(time=slice(10, None)), encoder="pca", latent_dim=4,
                             progress=False)]
        models[0].save(tmp / "m.zarr")
        print("ready", flush=True)
        i = 1
        while True:
            models[i % 2].save(tmp / "m.zarr", overwrite=True)
            i += 1
    elif task == "encode":
        print("ready", flush=True)
        xlatda.streaming.encode_to_zarr(tmp / "src.zarr", tmp / "m.zarr", tmp / "z.zarr",
                                        chunk=10, progress=False, client=False)
        print("done", flush=True)
    elif task == "cycle":
        print("ready", flush=True)
        cycle_run(tmp / "c.zarr")
        print("done", flush=True)
    else:
        raise SystemExit(f"unknown task {task!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
