"""The long form of an observation set: one entry per measured value.

:func:`xlatda.obs.to_tensors` makes it from a validated observation Dataset;
observation operators (:func:`xlatda.obs.build_operator`) and the cycling
driver consume it.

Examples
--------
>>> import numpy as np, torch
>>> t = ObservationTable(values=torch.tensor([1.0, 2.0]), error_std=torch.tensor([0.5, 0.5]),
...                      channel=torch.tensor([0, 0]), variable=np.array(["h", "h"]),
...                      lat=np.array([5.0, 15.0]), lon=np.array([5.0, 25.0]), position=None,
...                      time=None, obs_index=np.array([0, 1]), kind=None)
>>> len(t), t.select(np.array([False, True])).values.tolist()
(2, [2.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["OPERATOR_COLUMNS", "ObservationTable"]

#: The columns an observation operator depends on (places, channels and block-mean
#: footprints), in the order :func:`xlatda.spaces.table_key` reads them.
OPERATOR_COLUMNS = ("lat", "lon", "position", "channel", "footprint_weight", "footprint_lat",
                    "footprint_lon", "footprint_position")


@dataclass(frozen=True)
class ObservationTable:
    """An observation set in long form: one entry per measured value.

    Attributes
    ----------
    values, error_std : Tensor (P,)
        Values and error standard deviations, in the state's units.
    channel : LongTensor (P,)
        State channel each value measures.
    variable : ndarray of str (P,)
        State variable of each value.
    lat, lon : ndarray (P,) or None
        Location in degrees (lat/lon and point layouts).
    position : ndarray (P,) or None
        Position along a generic dimension (index units).
    time : ndarray (P,) or None
        Observation times (datetime64 or numbers), None for timeless sets.
    obs_index : ndarray (P,)
        Index of the row in the observation Dataset each value comes from.
    kind : ndarray of str (P,) or None
        Observation kind for multimodal sets.
    footprint_weight : ndarray (P, K) or None
        Footprint (area) observations: the weights of the ``K`` points each
        entry averages (:func:`xlatda.obs.coarsen`), normalised to sum 1 per
        entry; an entry whose row is all zero is a point observation at
        ``lat``/``lon``/``position``. None when every entry is a point.
    footprint_lat, footprint_lon, footprint_position : ndarray (P, K) or None
        The footprint points (degrees, or index positions on a generic
        layout); only where ``footprint_weight`` is positive are they used.
    """

    values: torch.Tensor
    error_std: torch.Tensor
    channel: torch.Tensor
    variable: np.ndarray
    lat: np.ndarray | None
    lon: np.ndarray | None
    position: np.ndarray | None
    time: np.ndarray | None
    obs_index: np.ndarray
    kind: np.ndarray | None
    footprint_weight: np.ndarray | None = None
    footprint_lat: np.ndarray | None = None
    footprint_lon: np.ndarray | None = None
    footprint_position: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.values.numel())

    def select(self, mask: np.ndarray) -> ObservationTable:
        """Subset by a boolean or integer index over entries."""
        idx = np.arange(len(self))[mask]
        t = torch.as_tensor(idx, dtype=torch.long)

        def pick(a):
            return None if a is None else a[idx]

        return ObservationTable(
            values=self.values[t], error_std=self.error_std[t], channel=self.channel[t],
            variable=self.variable[idx], lat=pick(self.lat), lon=pick(self.lon),
            position=pick(self.position), time=pick(self.time),
            obs_index=self.obs_index[idx], kind=pick(self.kind),
            footprint_weight=pick(self.footprint_weight),
            footprint_lat=pick(self.footprint_lat), footprint_lon=pick(self.footprint_lon),
            footprint_position=pick(self.footprint_position),
        )
