r"""Which held-out states give a representative representation-error model (issue 18, score6).

The fusion benchmark's model (:func:`score6_manifold.benchmark_model`, the same
fit) with :func:`xlatda.fit_representation_error` refitted on several
held-out pools, no sampling. For each pool: the error model's predicted floor
(root mean diagonal of :math:`\Sigma_{\rm rep}`, training-std units) and
diagonal part, against the measured floor and off-modes RMSE (the part of
``x - D(E(x))`` outside the pool's modes) on

* *validation*: the benchmark's validation windows (seed 1, 2 trajectories,
  hours 8/18/28/38);
* *validation8*: 8 trajectories of seed 1, one window each, first hours
  8/18/28/38 in turn (the same number of windows, spread over 4x the
  trajectories);
* *test*: the benchmark's test windows (seed 2);
* *population*: 24 fresh trajectories (seeds 12-23, two each), the same
  windows.

Pools: *calibration* (seed 3, 3 trajectories: the benchmark's), *pool16*
(seeds 4-11, two trajectories each) and *pool16_m64* (the same with 64 modes).

Run ``python benchmarks/score6_pool.py``; the table goes to
``benchmarks/out/score6_pool.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_fusion import CONFIGS, OUT, _data, _trajs
from score6_manifold import benchmark_model, residual_stats

import xlatda


def pool_data(seeds, per_seed: int, hours: int) -> xr.Dataset:
    """Trajectories of several seeds, concatenated over ``trajectory``."""
    parts = [_data(per_seed, hours, s) for s in seeds]
    ds = xr.concat(parts, dim="trajectory")
    return ds.assign_coords(trajectory=np.arange(ds.sizes["trajectory"]))


def spread_windows(trajs, starts) -> list[tuple[xr.Dataset, tuple[int, ...]]]:
    """One window per trajectory, the starts taken in turn."""
    return [(tr, (starts[i % len(starts)],)) for i, tr in enumerate(trajs)]


def main(out: str = "score6_pool.md", cache: str | None = "/tmp/score6_model.zarr") -> list:
    cfg = dict(CONFIGS["quick"])
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    base, _, std = benchmark_model(cfg, cache=cache)
    h, starts, w = cfg["hours"], cfg["test_starts"], cfg["window"]
    sets = {
        "validation": [(tr, starts) for tr in _trajs(_data(2, h, 1))],
        "validation8": spread_windows(_trajs(_data(8, h, 1)), starts),
        "test": [(tr, starts) for tr in _trajs(_data(2, h, 2))],
        "population": [(tr, starts) for tr in _trajs(pool_data(range(12, 24), 2, h))],
    }
    pool16 = pool_data(range(4, 12), 2, h)
    pools = {"calibration": (_data(cfg["calib_traj"], h, 3), 32),
             "pool16": (pool16, 32), "pool16_m64": (pool16, 64)}
    L = base.layout
    n_s = int(np.prod(L.spatial_shape))
    scale = torch.tensor([std[v] for v in L.channel_variable],
                         dtype=torch.float64).repeat_interleave(n_s)
    rows = []
    for name, (held, k) in pools.items():
        model = xlatda.fit_representation_error(base, held, modes=k)
        rep = xlatda.generative.representation_model(model)
        basis = torch.linalg.qr(rep.modes.T)[0]
        diag = (rep.modes**2).sum(0) + rep.var
        row = {"pool": name, "states": int(held.sizes["trajectory"] * held.sizes["time"]),
               "modes": k, "explained": model.history["representation_error"]["explained"],
               "pred_floor": float((diag / scale**2).mean().sqrt()),
               "pred_off": float((rep.var / scale**2).mean().sqrt())}
        for sname, wins in sets.items():
            st = [residual_stats(model, tr, s, w, std, basis, scale) for tr, s in wins]
            nw = [len(s) for _, s in wins]
            row[f"{sname}_floor"] = float(np.sqrt(np.average([r["floor"] ** 2 for r in st],
                                                             weights=nw)))
            row[f"{sname}_off"] = float(np.sqrt(np.average([r["off_modes"] ** 2 for r in st],
                                                           weights=nw)))
        rows.append(row)
        print({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()},
              flush=True)
    names = list(sets)
    lines = ["# Representation-error model against the held-out pool (issue 18, score6)", "",
             f"quick setup of bench_score_fusion; torch {torch.__version__}, 1 thread, total "
             f"{time.perf_counter() - t_all:.0f} s; written "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "`python benchmarks/score6_pool.py`", "",
             "Training-std units. *pred floor / pred off*: root mean diagonal of Σ_rep and of "
             "its diagonal part; per set, the measured floor (RMSE of D(E(x))) / the RMSE "
             "outside the pool's modes, over the set's windows.", "",
             "| pool | states | modes | explained | pred floor / off | "
             + " | ".join(f"{s} floor / off" for s in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['states']} | {r['modes']} | {r['explained']:.2f} | "
                     f"{r['pred_floor']:.3f} / {r['pred_off']:.3f} | "
                     + " | ".join(f"{r[f'{s}_floor']:.3f} / {r[f'{s}_off']:.3f}"
                                  for s in names) + " |")
    OUT.mkdir(exist_ok=True)
    (OUT / out).write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
