"""Stability of the guided score sampler with many precise observations (``guide_clip``)."""

from __future__ import annotations

import pytest
import torch

from xlatda.errors import ConfigError
from xlatda.methods.diffusion import GaussianEps
from xlatda.methods.score import ScoreDA

F64 = torch.float64


def _stiff_case(d: int = 8, p: int = 64, sy: float = 0.1):
    """Gaussian prior N(0, S) observed through a dense A with ||A S A^T|| ~ 400 >> sy^2."""
    g = torch.Generator().manual_seed(0)
    half = torch.randn(d, d, generator=g, dtype=F64) / d**0.5
    s = half @ half.T + 0.5 * torch.eye(d, dtype=F64)
    a = 3.0 * torch.randn(p, d, generator=g, dtype=F64) / d**0.5
    x_true = torch.linalg.cholesky(s) @ torch.randn(d, generator=g, dtype=F64)
    y = a @ x_true + sy * torch.randn(p, generator=g, dtype=F64)
    gain = s @ a.T @ torch.linalg.inv(a @ s @ a.T + sy**2 * torch.eye(p, dtype=F64))
    prior = GaussianEps(torch.zeros(1, d, dtype=F64), s)
    return prior, a, y, sy, gain @ y, s


def _draw(prior, a, y, sy, **kw):
    da = ScoreDA(net=prior, gamma=1e-2, **kw)
    x = da.analyse(400, lambda x0: x0[..., 0, :] @ a.T, y, sy,
                   generator=torch.Generator().manual_seed(1))
    return x[:, 0]


def test_unclipped_guidance_diverges_and_the_clip_keeps_it_bounded():
    prior, a, y, sy, mean_a, s = _stiff_case()
    x = _draw(prior, a, y, sy, steps=64, guide_clip=None)
    assert not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1e6
    prior_scale = float(s.diagonal().sum().sqrt())  # RMS size of a prior draw
    x = _draw(prior, a, y, sy, steps=64, guide_clip=1.0)
    assert bool(torch.isfinite(x).all())
    assert float((x.mean(0) - mean_a).norm()) < 0.3 * prior_scale
    assert float(x.std(0).norm()) < 0.5 * prior_scale


def test_clipped_sampler_reaches_the_kalman_mean_with_many_steps():
    prior, a, y, sy, mean_a, s = _stiff_case()
    post_scale = float((s - s @ a.T @ torch.linalg.solve(
        a @ s @ a.T + sy**2 * torch.eye(a.shape[0], dtype=F64), a @ s)).diagonal().sum().sqrt())
    x = _draw(prior, a, y, sy, steps=256, guide_clip=3.0)
    assert float((x.mean(0) - mean_a).norm()) < 0.5 * post_scale


def test_kernel_and_api_share_the_sampler_defaults():
    """One place for the defaults: the kernel's fields are SAMPLER_DEFAULTS and the API passes
    only what it is given (no second default at the xarray layer)."""
    import dataclasses

    from xlatda.generative import _score_settings
    from xlatda.methods.score import SAMPLER_DEFAULTS

    fields = {f.name: f.default for f in dataclasses.fields(ScoreDA)}
    assert {k: fields[k] for k in SAMPLER_DEFAULTS} == SAMPLER_DEFAULTS
    assert _score_settings({}) == {}
    assert _score_settings({"gamma": 0.1, "block": 9}) == {"gamma": 0.1}


def test_a_clip_that_never_binds_changes_nothing():
    prior = GaussianEps(torch.zeros(2, 3, dtype=F64), torch.eye(6, dtype=F64))
    y = torch.tensor([0.5, -1.0], dtype=F64)

    def observe(x0):
        return x0[..., 0, :2]

    out = [ScoreDA(net=prior, steps=16, guide_clip=c).analyse(
        50, observe, y, 0.3, generator=torch.Generator().manual_seed(3)) for c in (None, 1e9)]
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_guide_clip_must_be_positive(clip):
    with pytest.raises(ConfigError, match="guide_clip"):
        ScoreDA(net=GaussianEps(torch.zeros(1, 2), torch.eye(2)), guide_clip=clip)


def test_observation_gain_makes_the_sampler_independent_of_observation_units():
    """y = c A x + e with σ_y = c σ: the posterior of x does not depend on c. With
    obs_gain = c |A rows| the guided sampler gives the same samples for c = 1 and
    c = 1e4; without gains the inflation γσ_t²/μ_t² is unit-blind and they differ."""
    from xlatda.methods.score import observation_gain

    d, p, sy = 4, 6, 0.3
    g = torch.Generator().manual_seed(3)
    a = torch.randn(p, d, generator=g, dtype=F64)
    prior = GaussianEps(torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64))
    y = a @ torch.randn(d, generator=g, dtype=F64) + sy * torch.randn(p, generator=g, dtype=F64)

    def draw(c, with_gain):
        da = ScoreDA(net=prior, gamma=0.1, steps=32)
        obs = lambda x0: c * (x0[..., 0, :] @ a.T)  # noqa: E731
        gain = observation_gain(obs, (1, d), probes=20000, dtype=F64,
                                generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(gain, c * a.norm(dim=1), rtol=0.05, atol=0)
        return da.analyse(64, obs, c * y, c * sy, obs_gain=gain if with_gain else None,
                          generator=torch.Generator().manual_seed(1))

    torch.testing.assert_close(draw(1e4, True), draw(1.0, True), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(draw(1e4, False), draw(1.0, False), atol=1e-3)
