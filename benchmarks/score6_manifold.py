r"""How far each shallow-water trajectory lies off the decoder's manifold (issue 18, score6).

The setup of :mod:`bench_score_fusion` (quick: same training data, the same
autoencoder and score prior, fitted with the same seed, and the same
representation-error model on the calibration trajectories, seed 3). No
sampling: for every trajectory of many seeds (two trajectories per seed, as
the benchmark's validation and test sets are drawn), it encodes and decodes
the states and records, in training-std units over height and vorticity,

* *floor*: RMSE of ``D(E(x))`` against ``x`` over the benchmark's windows
  (hours ``s .. s + 4`` for ``s`` in the quick mode's starts) and over every
  hour (*floor_all*);
* *off_modes*: RMSE of the part of ``x - D(E(x))`` outside the span of the
  error model's 32 modes, over the windows;
* the trajectory's Galewsky parameters (jet speed, bump height, bump
  latitude and longitude) and *nn_dist*: the distance of its parameters to the
  nearest training trajectory's, each parameter scaled by its range
  (longitude left out: a rotation of the initial bump), and *lon_gap*: the
  circular distance (degrees) of its bump longitude to the nearest training
  trajectory's (the autoencoder, on a PCA base, is not equivariant in
  longitude, so a bump where no training bump was is a state it has not seen).

The windows of seed 1 are the benchmark's validation set, those of seed 2 its
test set, seed 0 the training trajectories (in-sample), seed 3 the
calibration trajectories; the other seeds are fresh draws of the same kind.

Run ``python benchmarks/score6_manifold.py [--seeds 4-23]``; the table goes to
``benchmarks/out/score6_manifold.md`` and the rows to ``score6_manifold.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_fusion import CONFIGS, OUT, VARS, _data, _trajs, fit_models

import xlatda
from xlatda.dynamics.shallow_water import GALEWSKY_RANGES
from xlatda.layout import CHANNEL_DIM

PARAMS = ("jet_speed", "bump_height", "bump_lat", "bump_lon")


def benchmark_model(cfg: dict, seed: int = 0, cache: str | None = None):
    """The fusion benchmark's model (autoencoder, score prior, representation error),
    the training data and the training std per variable; ``cache``: a directory where
    the model is saved after fitting and opened from on later runs."""
    train = _data(cfg["train_traj"], cfg["hours"], 0)
    std = {v: float(train[v].std()) for v in VARS}
    path = Path(cache) if cache else None
    if path is not None and path.exists():
        return xlatda.open_model(path), train, std
    err = {v: 0.1 * std[v] for v in VARS}
    model, _, _ = fit_models(train, cfg, err, seed)
    model = xlatda.fit_representation_error(model, _data(cfg["calib_traj"], cfg["hours"], 3),
                                            modes=32)
    if path is not None:
        model.save(path)
    return model, train, std


def residual_stats(model, tr, starts, window, std, basis, scale) -> dict:
    """Floor (windows, all hours) and off-modes RMSE of one trajectory, per window too."""
    back = xlatda.decode(xlatda.encode(tr, model), model)
    back = back[list(VARS)].transpose(*tr[VARS[0]].dims)
    sq = np.stack([(((back[v] - tr[v]) / std[v]).values ** 2) for v in VARS])  # (2, T, ...)
    per_t = sq.reshape(sq.shape[0], sq.shape[1], -1).mean(axis=(0, 2))  # (T,)
    L = model.layout
    dims = ("time", CHANNEL_DIM, *L.spatial_dims)
    e = (np.asarray(L.stack(tr[list(L.variables)]).transpose(*dims).values, float)
         - np.asarray(L.stack(back[list(L.variables)]).transpose(*dims).values, float))
    e = torch.nan_to_num(torch.as_tensor(e).reshape(e.shape[0], -1))
    off = e - (e @ basis) @ basis.T
    off_t = ((off / scale) ** 2).mean(1).numpy()  # (T,)
    win = [list(range(s, s + window)) for s in starts]
    return {"floor": float(np.sqrt(np.mean([per_t[w].mean() for w in win]))),
            "floor_all": float(np.sqrt(per_t.mean())),
            "off_modes": float(np.sqrt(np.mean([off_t[w].mean() for w in win]))),
            "floor_windows": [round(float(np.sqrt(per_t[w].mean())), 4) for w in win],
            "floor_hours": [round(float(v), 4) for v in np.sqrt(per_t)]}


def main(seeds: list[int], out: str = "score6_manifold", cache: str | None = None,
         per_seed: int = 2) -> list[dict]:
    cfg = dict(CONFIGS["quick"])
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    model, train, std = benchmark_model(cfg, cache=cache)
    rep = xlatda.generative.representation_model(model)
    L = model.layout
    n_s = int(np.prod(L.spatial_shape))
    scale = torch.tensor([std[v] for v in L.channel_variable],
                         dtype=torch.float64).repeat_interleave(n_s)
    basis = torch.linalg.qr(rep.modes.T)[0]
    p_train = np.stack([train[p].values for p in PARAMS[:3]], 1)
    width = np.array([GALEWSKY_RANGES[p][1] - GALEWSKY_RANGES[p][0] for p in PARAMS[:3]])
    lon_train = train["bump_lon"].values.astype(float)
    role = {0: "train", 1: "validation", 2: "test", 3: "calibration"}
    rows = []
    for s in seeds:
        n = cfg["train_traj"] if s == 0 else cfg["calib_traj"] if s == 3 else per_seed
        ds = _data(n, cfg["hours"], s)
        for i, tr in enumerate(_trajs(ds)):
            par = {p: float(ds[p].values[i]) for p in PARAMS}
            d = np.abs((np.array([par[p] for p in PARAMS[:3]]) - p_train) / width)
            gap = np.abs((par["bump_lon"] - lon_train + 180.0) % 360.0 - 180.0)
            if s == 0:
                d[i] = np.inf  # its own parameters
                gap[i] = np.inf
            row = {"seed": s, "trajectory": i, "role": role.get(s, "fresh"), **par,
                   "nn_dist": float(np.sqrt((d**2).sum(1)).min()), "lon_gap": float(gap.min()),
                   **residual_stats(model, tr, cfg["test_starts"], cfg["window"], std,
                                    basis, scale)}
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("floor_hours", "floor_windows")}, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{out}.json").write_text(json.dumps(rows, indent=1))
    write_table(rows, out, time.perf_counter() - t_all)
    return rows


def write_table(rows: list[dict], out: str, total: float) -> None:
    fresh = [r for r in rows if r["role"] == "fresh"]
    lines = ["# Off-manifold distance of shallow-water trajectories (issue 18, score6)", "",
             f"quick setup of bench_score_fusion; torch {torch.__version__}, 1 thread, total "
             f"{total:.0f} s; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "`python benchmarks/score6_manifold.py`", "",
             "Training-std units. *floor*: RMSE of D(E(x)) over the benchmark's windows; "
             "*floor_all*: over all hours; *off_modes*: the part outside the error model's "
             "32 modes (windows); *nn_dist*: distance of (jet speed, bump height, bump "
             "latitude), each over its range, to the nearest training trajectory's; *lon_gap*: "
             "degrees from its bump longitude to the nearest training bump longitude.", "",
             "| seed | traj | role | jet | height | lat | lon | lon_gap | nn_dist | floor | "
             "floor_all | off_modes | floor per window |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['trajectory']} | {r['role']} | {r['jet_speed']:.1f} | "
                     f"{r['bump_height']:.1f} | {r['bump_lat']:.1f} | {r['bump_lon']:.0f} | "
                     f"{r['lon_gap']:.0f} | {r['nn_dist']:.3f} | {r['floor']:.3f} | "
                     f"{r['floor_all']:.3f} | "
                     f"{r['off_modes']:.3f} | {r['floor_windows']} |")
    for name in ("train", "calibration", "validation", "test", "fresh"):
        f = np.array([r["floor"] for r in rows if r["role"] == name])
        if f.size:
            lines.append(("" if name != "train" else "\n") + f"{name}: {f.size} "
                         f"trajectories, rms floor {np.sqrt(np.mean(f**2)):.3f}, max "
                         f"{f.max():.3f}.")
    if fresh:
        f = np.array([r["floor"] for r in fresh])
        lines += ["", f"Fresh trajectories ({len(fresh)}): floor median {np.median(f):.3f}, "
                  f"5-95 % [{np.quantile(f, 0.05):.3f}, {np.quantile(f, 0.95):.3f}], max "
                  f"{f.max():.3f}; fraction above 0.1: {np.mean(f > 0.1):.2f}."]
        for k in ("jet_speed", "bump_height", "bump_lat", "nn_dist", "lon_gap"):
            x = np.array([r[k] for r in fresh])
            lines.append(f"Spearman rank correlation of floor with {k}: "
                         f"{_spearman(x, f):+.2f}.")
    (OUT / f"{out}.md").write_text("\n".join(lines) + "\n")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0-23", help="a-b range or comma-separated")
    ap.add_argument("--per-seed", type=int, default=2)
    ap.add_argument("--out", default="score6_manifold")
    ap.add_argument("--cache", default="/tmp/score6_model.zarr",
                    help="where the fitted model is kept between runs ('' for none)")
    args = ap.parse_args()
    if "-" in args.seeds:
        a, b = (int(v) for v in args.seeds.split("-"))
        seeds = list(range(a, b + 1))
    else:
        seeds = [int(v) for v in args.seeds.split(",")]
    main(seeds, out=args.out, cache=args.cache or None, per_seed=args.per_seed)
