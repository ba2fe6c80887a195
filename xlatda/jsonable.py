"""Training histories as plain JSON data (what model stores and ``history`` attrs hold).

Examples
--------
>>> import numpy as np
>>> to_jsonable({"loss": [np.float32(0.5), 1], 2: (None, "x")})
{'loss': [0.5, 1], '2': [None, 'x']}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_jsonable"]


def to_jsonable(hist: Any) -> Any:
    if isinstance(hist, dict):
        return {str(k): to_jsonable(v) for k, v in hist.items()}
    if isinstance(hist, (list, tuple)):
        return [to_jsonable(v) for v in hist]
    if isinstance(hist, (np.floating, np.integer)):
        return hist.item()
    if isinstance(hist, torch.Tensor):
        return hist.tolist()
    if hist is None or isinstance(hist, (str, int, float, bool)):
        return hist
    return str(hist)
