"""SINR on a limited-area reanalysis grid as a user calls it: the ``"regional"`` preset.

``xlatda.fit(train, encoder="sinr", encoder_options=SINR_PRESETS["regional"],
validation=val)`` against ``xlatda.fit(train, encoder="pca")`` at the same latent
size, on the ERA5 2 m temperature UK box (``era5_t2m_2019-03_uk.nc``): fit on days
1-14, validation days 15-24 (``fit``'s early stopping; the prior is chosen inside
``fit`` by cross-validation on the training days alone), held out days 25-31, never
used for a choice. RMSE in kelvin, cos(lat) weighted, of ``ds.lda.encode(model)
.lda.decode(model)``; the seconds are the whole ``xlatda.fit`` call.

Run ``python benchmarks/bench_sinr_regional.py [--data DIR] [--latents 32 64]
[--out FILE]``; the table goes to ``benchmarks/out/sinr_regional.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

import xlatda
from xlatda.encoders.sinr import SINR_PRESETS

HERE = Path(__file__).resolve().parent


def _split(path: Path) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    ds = xr.open_dataset(path)
    ds = ds.drop_vars([v for v in ds.coords if v not in ds.dims])
    day = ds.time.dt.day
    return (ds.sel(time=day <= 14), ds.sel(time=(day > 14) & (day <= 24)),
            ds.sel(time=day > 24))


def _rmse(model, part: xr.Dataset) -> float:
    rec = part.lda.encode(model).lda.decode(model)
    name = next(iter(part.data_vars))
    lat = part[next(d for d in part.dims if "lat" in d)]
    w = np.cos(np.deg2rad(lat))
    w = w / w.mean()
    return float(np.sqrt((((rec[name] - part[name]) ** 2) * w).mean()))


def main(argv: list[str] | None = None) -> None:
    here = HERE.parent.parent / "shared" / "data"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("XLATDA_DATA", here)))
    ap.add_argument("--latents", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "sinr_regional.md")
    args = ap.parse_args(argv)
    train, val, test = _split(args.data / "era5_t2m_2019-03_uk.nc")
    rows = []
    with xlatda.set_options(progress=False):
        for latent in args.latents:
            for name, kw in [("PCA", {"encoder": "pca"}),
                             ("SINR regional", {"encoder": "sinr", "validation": val,
                                                "encoder_options": SINR_PRESETS["regional"]})]:
                t0 = time.perf_counter()
                model = xlatda.fit(train, latent_dim=latent, seed=0, **kw)
                sec = time.perf_counter() - t0
                hist = model.history["encoder"]
                note = ""
                if "linear_prior" in hist:
                    note = (f"prior {[c['linear_prior'] for c in hist['linear_prior']]}, "
                            f"best epoch {hist['best_epoch']}")
                rows.append((name, latent, _rmse(model, val), _rmse(model, test), sec, note))
                print(rows[-1], flush=True)
    lines = ["# SINR's regional preset against PCA, as xlatda.fit is called", "",
             f"ERA5 t2m UK box; fit days 1-14, validation 15-24, held out 25-31; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
             f"{os.getloadavg()[0]:.1f}.", "",
             "| encoder | latent | val RMSE (K) | held-out RMSE (K) | fit (s) | note |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {v:.4f} | {t:.4f} | {s:.0f} | {note} |"
              for n, k, v, t, s, note in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
