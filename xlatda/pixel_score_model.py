"""The pixel-space score model of SLAMS' baseline: a layout, a normaliser, a score prior.

Made by :func:`xlatda.fit_score` with ``space="physical"`` (and re-exported
there as :class:`xlatda.generative.PixelScoreModel`); saved and opened like
a latent model (store format ``xlatda-score/1``, :mod:`xlatda.io`).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from xlatda.layout import StateLayout
from xlatda.model_store import SCORE_FORMAT, save_model
from xlatda.normalize import Normalizer

if TYPE_CHECKING:  # pragma: no cover
    from xlatda.methods.diffusion import ScorePrior

__all__ = ["PixelScoreModel"]


@dataclasses.dataclass(eq=False)
class PixelScoreModel:
    """A pixel-space score prior: windows of normalised physical states.

    The baseline of SLAMS: the same diffusion prior and sampler as the latent
    version, on the physical state itself. Made by
    :func:`fit_score` with ``space="physical"``; used as ``model`` of
    :func:`xlatda.assimilate` / :func:`xlatda.cycle` with ``method="score"``.

    Attributes
    ----------
    layout : StateLayout
        The training layout (grid, variables).
    normalizer : Normalizer
        Per-channel statistics: the network sees ``(x - mean) / std``.
    score : xlatda.methods.diffusion.ScorePrior
        The U-Net ε-network with window, time step and schedule.
    history : dict
        Training history.
    model_id : str
        Identity of the model.

    Examples
    --------
    See :func:`fit_score`.
    """

    store_format: ClassVar[str] = SCORE_FORMAT

    layout: StateLayout
    normalizer: Normalizer
    score: ScorePrior
    history: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def window(self) -> int:
        """Consecutive states per window."""
        return self.score.window

    @property
    def time_step(self) -> dict[str, Any] | None:
        """Time between consecutive states of a window."""
        return self.score.time_step

    def require_score(self) -> ScorePrior:
        """The score prior (always present)."""
        return self.score

    def to(self, device: Any = None, dtype: Any = None) -> PixelScoreModel:
        """Move the network to ``device``/``dtype`` (in place); returns self."""
        self.score.net.to(device=device, dtype=dtype)
        self.score.to(device=device)
        return self

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write to a zarr store (:func:`xlatda.io.save_model`); reopen with
        :func:`xlatda.open_model`."""
        save_model(self, path, overwrite=overwrite)

    @classmethod
    def from_parts(cls, meta: dict[str, Any], parts: dict[str, Any]) -> PixelScoreModel:
        """Assemble from a store's metadata and rebuilt parts (:mod:`xlatda.model_store`)."""
        return cls(
            layout=StateLayout.from_dict(meta["layout"]),
            normalizer=Normalizer.from_dict(meta["normalizer"]),
            score=parts["score"],
            history=meta.get("history", {}),
            model_id=meta["model_id"],
        )

    def __repr__(self) -> str:
        return (f"PixelScoreModel(window={self.window}, variables={list(self.layout.variables)}, "
                f"grid={self.layout.kind}{self.layout.spatial_shape}, "
                f"net={getattr(self.score.net, 'kind', '?')!r})")
