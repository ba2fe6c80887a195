"""``linear_prior="auto"``: SINR's grid-fit prior chosen by blocked cross-validation.

The scores of :func:`choose_prior` (dual PCA, warm-started subspace iteration)
must equal a brute-force reference (one dense eigendecomposition per
candidate and fold); the choice must follow the data (smooth signal in noise:
a prior; exactly low-rank rough fields: none); a SINR built with ``"auto"``
must equal one built with the number it chose, bit for bit, and the
``"regional"`` preset must build.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.encoders.sinr import SINR, SINR_PRESETS
from xlatda.encoders.sinr_prior import PRIOR_GRID, _block_error, choose_prior, shrunk_eofs
from xlatda.errors import ConfigError

BOX = {"kind": "latlon", "lat": [58.0 - i for i in range(9)],
       "lon": [-10.0 + 1.0 * j for j in range(13)]}
SHAPE = (9, 13)
NET = {"hidden": 8, "depth": 2, "max_freq": 2, "seed": 0}


def _smooth_kernel(p: int) -> torch.Tensor:
    t = torch.linspace(0.0, 4.0, p, dtype=torch.float64)
    return torch.exp(-((t[:, None] - t[None]) ** 2) / 0.5) / p


def _reference(x, wh, kw, k, grid, folds):
    """Brute force: a dense eigendecomposition per candidate and held-out block."""
    n = x.shape[0]
    out = []
    for gamma in grid:
        total = 0.0
        for held in torch.arange(n).tensor_split(folds):
            keep = torch.ones(n, dtype=torch.bool)
            keep[held] = False
            mean, eofs = shrunk_eofs(x[keep], wh, kw, float(gamma), k)
            total += _block_error(x[held], wh, mean, eofs)
        out.append(total / n)
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 30), k=st.integers(1, 6),
       folds=st.integers(2, 5))
def test_cross_validation_scores_equal_the_dense_reference(seed, n, k, folds):
    gen = torch.Generator().manual_seed(seed)
    p = 25
    x = torch.randn(n, p, generator=gen, dtype=torch.float64).cumsum(1) / 5
    w = torch.rand(p, generator=gen, dtype=torch.float64) + 0.5
    wh = w / w.sum()
    kern = _smooth_kernel(p) * p
    kw = wh.sqrt()[:, None] * kern * wh.sqrt()[None]
    gamma, scores = choose_prior(x, wh, kw, k, folds=folds)
    ref = _reference(x, wh, kw, k, PRIOR_GRID, min(folds, n))
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(ref), rtol=1e-5, atol=0)
    assert gamma == PRIOR_GRID[min(range(len(ref)), key=lambda i: (scores[i], i))]


def test_the_choice_follows_the_data():
    gen = torch.Generator().manual_seed(1)
    p, n = 40, 36
    t = torch.linspace(0.0, 3.14159, p, dtype=torch.float64)
    wh = torch.full((p,), 1.0 / p, dtype=torch.float64)
    kw = _smooth_kernel(p)
    # a smooth pattern with random amplitude in white noise: the plain PCA fits noise
    smooth = torch.randn(n, 1, generator=gen, dtype=torch.float64) * torch.sin(t)
    noisy = smooth + 0.5 * torch.randn(n, p, generator=gen, dtype=torch.float64)
    gamma, scores = choose_prior(noisy, wh, kw, 3)
    assert gamma > 0.0 and scores[PRIOR_GRID.index(gamma)] < scores[0]
    # fields exactly in a fixed rough 3-dimensional subspace: the PCA recovers it, a
    # smoothness prior only bends the EOFs away from it
    rough = torch.linalg.qr(torch.randn(p, 3, generator=gen, dtype=torch.float64))[0]
    exact = torch.randn(n, 3, generator=gen, dtype=torch.float64) @ rough.t()
    gamma, scores = choose_prior(exact, wh, kw, 3)
    assert gamma == 0.0 and scores[0] < 1e-20


def _fields(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    la = torch.tensor(BOX["lat"], dtype=torch.float64)[:, None]
    lo = torch.tensor(BOX["lon"], dtype=torch.float64)[None]
    out = torch.zeros(n, 1, *SHAPE, dtype=torch.float64)
    for j in range(5):
        amp = torch.randn(n, 1, 1, 1, generator=gen, dtype=torch.float64) / (1 + j)
        out += amp * torch.sin(0.3 * (j + 1) * la + 0.2 * (5 - j) * lo + j)
    return out + 0.3 * torch.randn(n, 1, *SHAPE, generator=gen, dtype=torch.float64)


def _sinr(**kw) -> SINR:
    opts = {"region": "auto", "region_stretch": "box", "linear_degree": "auto",
            "linear_fit": "grid", **NET, **kw}
    return SINR(1, SHAPE, 4, BOX, **opts)


def test_auto_equals_the_number_it_chose_bit_for_bit():
    x = _fields(24)
    auto = _sinr(linear_prior="auto")
    z = auto.init_pca(x, dtype="float64")
    [choice] = auto.prior_choice
    assert choice["linear_prior"] in PRIOR_GRID and len(choice["cv_scores"]) == len(PRIOR_GRID)
    fixed = _sinr(linear_prior=choice["linear_prior"])
    z_fixed = fixed.init_pca(x, dtype="float64")
    assert torch.equal(z, z_fixed)
    assert torch.equal(auto.lin_weight, fixed.lin_weight)
    assert torch.equal(auto.lin_bias, fixed.lin_bias)
    # the same fields choose the same way again; config keeps "auto"
    again = _sinr(linear_prior="auto")
    again.init_pca(x, dtype="float64")
    assert again.prior_choice == auto.prior_choice
    assert auto.config["linear_prior"] == "auto"
    assert SINR(**auto.config).training_defaults["linear_prior"] == "auto"


def test_fit_reports_the_choice_in_its_history():
    x = _fields(16)
    enc = _sinr(linear_prior="auto", lr_linear=0.0)
    hist = enc.fit(x.float(), x[:4].float(), epochs=1, batch_size=8, seed=0, progress=False)
    assert hist["linear_prior"][0]["linear_prior"] in PRIOR_GRID


def test_regional_preset_builds_with_the_box_grid_fit_and_auto_prior():
    opts = {**SINR_PRESETS["regional"], "hidden": 8, "depth": 2, "max_freq": 2}
    enc = SINR(1, SHAPE, 4, BOX, **opts)
    assert enc.region is not None and enc.region_stretch == "box"
    assert enc.training_defaults["linear_fit"] == "grid"
    assert enc.training_defaults["linear_prior"] == "auto"


@pytest.mark.parametrize("bad", ["bogus", True, -1.0])
def test_bad_prior_is_refused(bad):
    with pytest.raises(ConfigError, match="linear_prior"):
        _sinr(linear_prior=bad)


def test_auto_prior_needs_the_grid_fit():
    with pytest.raises(ConfigError, match="linear_fit='grid'"):
        _sinr(linear_prior="auto", linear_fit="projection")


def test_auto_prior_needs_two_fields():
    with pytest.raises(ConfigError, match="at least 2"):
        choose_prior(torch.zeros(1, 5, dtype=torch.float64),
                     torch.full((5,), 0.2, dtype=torch.float64),
                     torch.eye(5, dtype=torch.float64), 2)


def test_a_regional_grid_without_region_warns_and_a_global_one_does_not():
    import warnings

    from xlatda.errors import RegionalGridWarning

    with pytest.warns(RegionalGridWarning, match="region='auto'"):
        SINR(1, SHAPE, 4, BOX, **NET)
    glob = {"kind": "latlon", "lat": [60.0, 20.0, -20.0, -60.0],
            "lon": [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegionalGridWarning)
        SINR(1, (4, 6), 4, glob, **NET)
        SINR(1, SHAPE, 4, BOX, region="auto", **NET)


def test_an_iteration_that_does_not_converge_falls_back_to_the_dense_solution(monkeypatch):
    import xlatda.encoders.sinr_prior as sp

    gen = torch.Generator().manual_seed(3)
    p, n, k = 25, 20, 4
    x = torch.randn(n, p, generator=gen, dtype=torch.float64).cumsum(1) / 5
    wh = torch.full((p,), 1.0 / p, dtype=torch.float64)
    kw = _smooth_kernel(p)
    slow = sp._subspace_eofs
    monkeypatch.setattr(sp, "_subspace_eofs", lambda c, s, kk: slow(c, s, kk, max_iter=1))
    _, scores = choose_prior(x, wh, kw, k)
    ref = _reference(x, wh, kw, k, PRIOR_GRID, 4)
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(ref), rtol=1e-10, atol=0)
