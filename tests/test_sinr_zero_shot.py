"""Zero-shot use of SINR through the public API: another resolution, scattered points.

A SINR trained on shallow-water states at 32 x 64 decodes at any point of the
sphere: the same (held-out) state on a 64 x 128 grid it has never seen must be
reconstructed about as well as on the training grid, and a code fitted to 1024
scattered observations only must reconstruct about as well as one fitted to
the full grid.
"""

from __future__ import annotations

import numpy as np
import pytest

import xlatda

DATA = {"hours": 24, "output_every": "3h", "trajectories": 2, "spinup_hours": 12, "seed": 0,
        "progress": False}


@pytest.fixture(scope="module")
def zero_shot():
    coarse = xlatda.datasets.shallow_water(nlat=32, nlon=64, **DATA)
    fine = xlatda.datasets.shallow_water(nlat=64, nlon=128, **DATA)
    model = xlatda.fit(
        coarse.isel(trajectory=0), encoder="sinr", latent_dim=32, epochs=40, batch_size=4,
        validation=None, progress=False, seed=0,
        encoder_options={"hidden": 32, "depth": 3, "max_freq": 6, "lr_weights": 2e-2,
                         "lr_codes": 2e-2},
    )
    return model, coarse.isel(trajectory=1), fine.isel(trajectory=1)


def nrmse(a, b) -> float:
    """RMSE over both variables, each relative to the truth's standard deviation."""
    return float(np.mean([np.sqrt(float(((a[v] - b[v]) ** 2).mean())) / float(b[v].std())
                          for v in b.data_vars]))


def test_decodes_the_same_state_on_an_unseen_finer_grid(zero_shot):
    model, test, test_fine = zero_shot
    z = test.lda.encode(model)
    on_coarse = nrmse(z.lda.decode(model), test)
    fine = z.lda.decode(model, at=test_fine)
    assert dict(fine.sizes)["lat"] == 64 and dict(fine.sizes)["lon"] == 128
    on_fine = nrmse(fine, test_fine)
    # the model explains most of the held-out state's spatial variance, and no less of it
    # at 64 x 128 (the finer truth adds only the degrees 32..42 that the 32 x 64 grid
    # cannot carry); a decode at wrongly placed points would be off by O(1)
    assert on_coarse < 0.45
    assert on_fine < 1.1 * on_coarse + 0.02


def test_encodes_from_1024_scattered_points(zero_shot):
    model, test, test_fine = zero_shot
    # perfect values at 1024 random places per time (bilinear in the finer truth),
    # off both grids; both variables observed at each place
    obs = xlatda.obs.sample_points(test_fine, n=1024, error_std={"height": 1.0,
                                   "vorticity": 1e-7}, seed=3, noise=False)
    z_obs = obs.lda.encode(model)
    z_grid = test.lda.encode(model)
    from_grid = nrmse(z_grid.lda.decode(model), test)
    from_obs = nrmse(z_obs.lda.decode(model), test)
    assert from_obs < 1.25 * from_grid
    assert from_obs < 0.5
