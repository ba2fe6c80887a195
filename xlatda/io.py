"""The zarr model store: config as JSON attributes, weights as arrays.

:func:`save_model` and :func:`open_model` (and the plain-data form
:func:`to_state` / :func:`from_state` that pickling uses). The engine that
writes, verifies and reads stores knowing no model class is
:mod:`xlatda.model_store`; this module adds the model classes on top.

Layout of a store (a zarr v3 group)::

    model.zarr/
      attrs["xlatda"] = {format, model_id, layout, normalizer, time_step,
                         history, versions, parts: {encoder: {kind, config},
                         dynamics: {...}, model_error: {...}, score: {...}}}
      encoder/<tensor name>       one array per state_dict entry
      dynamics/<tensor name>
      model_error/<tensor name>
      score/<tensor name>         optional: the score prior of method="score"
      prior/<tensor name>         optional: the latent prior (mean, scale)

The score part (:class:`~xlatda.methods.diffusion.ScorePrior`) holds the
ε-network's weights and the latent standardisation as arrays; its config
(network kind and constructor arguments, window, time step, schedule) is
JSON. Stores written before it existed open unchanged.

A pixel-space score model (:class:`xlatda.pixel_score_model.PixelScoreModel`) is
written the same way with format ``xlatda-score/1``: layout, normaliser and
one ``score`` part, no encoder; :func:`open_model` returns it as such.

Every weight is stored with its exact dtype and compressed with numcodecs'
Zstd, so a round trip is bit-exact. Opening a store reads JSON and arrays
only: it never unpickles and never runs code from the store; modules are
rebuilt from registries by name, and unknown names are refused.

Integrity
---------
Every array's SHA-256 (of its dtype, shape and raw bytes) is stored in its
part's config (``parts[part]["sha256"][key]``), and the SHA-256 of the whole
``xlatda`` attribute (canonical JSON) in ``attrs["xlatda_sha256"]``. Opening
a store verifies both, so a deleted chunk (which zarr would read as the fill
value), a flipped byte in a chunk or an edited config value is refused with
a :class:`~xlatda.errors.ModelStoreError` naming the part and array, never
opened silently. Unknown parts, arrays and config keys are refused too (the
message names the key and the known ones). Stores written before checksums
existed open unchanged (only the structure is checked).

Atomic saves
------------
A save writes the whole store to a hidden sibling ``.<name>.<pid>.<token>.tmp``
(files flushed to disk), then, with ``overwrite=True``, renames the old model
to ``.<name>.<pid>.<token>.old`` and the new one into place, and only then
deletes the old one. Every intermediate state leaves either a readable model
at the path or, if the process was killed between the two renames, the old
model in the ``.old`` sibling: :func:`open_model` (and the next save) rename
it back. Hidden ``.tmp``/``.old`` siblings left by killed saves (their process
is gone) are removed by the next save to the same path. An interrupted or
failed save thus never leaves a half-written model, and never no model, at
the target; an existing model is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from xlatda.errors import XlatdaError
from xlatda.model import LatentModel
from xlatda.model_store import (
    FORMAT,
    SCORE_FORMAT,
    array_sha256,
    meta_sha256,
    parts_from_state,
    read_store,
    save_model,
    store_error,
    to_state,
)
from xlatda.pixel_score_model import PixelScoreModel

__all__ = ["array_sha256", "from_state", "meta_sha256", "open_model", "save_model", "to_state"]

_CLASSES = {FORMAT: LatentModel, SCORE_FORMAT: PixelScoreModel}


def _assemble(meta: dict[str, Any], parts: dict[str, nn.Module]) -> Any:
    return _CLASSES[meta["format"]].from_parts(meta, parts)


def from_state(state: dict[str, Any]) -> Any:
    """Inverse of :func:`to_state` (the model comes back on CPU)."""
    return _assemble(*parts_from_state(state))


def open_model(path: Any, *, device: Any = None) -> Any:
    """Open a model written by :meth:`LatentModel.save` (or ``PixelScoreModel.save``).

    The store is verified before anything is built: the config's and every
    array's checksum, every chunk present, no unknown part, array or key.
    If a save to ``path`` was killed between its two renames (no model at
    ``path``, the old one in a hidden ``.old`` sibling), the old model is
    renamed back first.

    Parameters
    ----------
    path : str or path-like
        The store.
    device : str or torch.device, optional
        Where to put the weights (default CPU).

    Returns
    -------
    LatentModel or xlatda.generative.PixelScoreModel
        A :class:`~xlatda.LatentModel` (with its score prior when it was
        saved with one), or the pixel-space score model of a store written
        by ``PixelScoreModel.save``.

    Raises
    ------
    ModelStoreError
        If ``path`` is not an xlatda model store, names an unknown format,
        or is damaged (checksum mismatch, missing chunk or array, unknown
        part or key); the message says which.

    Examples
    --------
    >>> import tempfile, xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
    >>> model = xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)
    >>> path = tempfile.mkdtemp() + "/m.zarr"
    >>> model.save(path)
    >>> open_model(path).model_id == model.model_id
    True
    """
    meta, parts = read_store(path)
    try:
        model = _assemble(meta, parts)
    except XlatdaError:
        raise
    except Exception as err:
        raise store_error(str(path), f"the model cannot be assembled ({type(err).__name__}: "
                          f"{err})") from None
    if device is not None:
        model.to(device=device)
    return model
