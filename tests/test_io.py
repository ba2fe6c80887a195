"""Model store integrity: checksums verified on open, atomic and recoverable saves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import xlatda
from xlatda.errors import ModelStoreError
from xlatda.io import open_model


@pytest.fixture(scope="module")
def model():
    ds = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
    return xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)


def _weights(m):
    return {k: v.numpy() for k, v in m.encoder.state_dict().items()}


def test_round_trip_is_bit_exact_and_checksummed(model, tmp_path):
    model.save(tmp_path / "m.zarr")
    meta = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())["attributes"]
    assert len(meta["xlatda_sha256"]) == 64
    assert set(meta["xlatda"]["parts"]["encoder"]["sha256"]) == {
        key for _, key in meta["xlatda"]["parts"]["encoder"]["tensors"]}
    back = open_model(tmp_path / "m.zarr")
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(_weights(back)[k], v)


def test_flipped_byte_and_deleted_chunk_are_refused(model, tmp_path):
    path = tmp_path / "m.zarr"
    model.save(path)
    chunk = next(p for p in (path / "encoder" / "components").rglob("*")
                 if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="components"):
        open_model(path)
    chunk.unlink()
    with pytest.raises(ModelStoreError, match="missing"):
        open_model(path)


def test_unknown_config_key_is_named_with_the_known_ones(model, tmp_path):
    path = tmp_path / "m.zarr"
    model.save(path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["xlatda"]["parts"]["encoder"]["config"]["latent_dimm"] = 4
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(ModelStoreError, match=r"'latent_dimm'.*did you mean 'latent_dim'"):
        open_model(path)


def test_kill_between_renames_is_recovered_and_leftovers_cleaned(model, tmp_path):
    path = tmp_path / "m.zarr"
    model.save(path)
    # The state a SIGKILL between save's two renames leaves: the old model in a
    # hidden .old sibling of a dead process, the new one in a .tmp sibling.
    dead = 2**22 + 12345
    os.replace(path, tmp_path / f".m.zarr.{dead}.abcd0123.old")
    (tmp_path / f".m.zarr.{dead}.abcd0123.tmp").mkdir()
    back = open_model(path)
    assert back.model_id == model.model_id
    model.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_save_without_overwrite_refuses_a_recoverable_model(model, tmp_path):
    path = tmp_path / "m.zarr"
    model.save(path)
    os.replace(path, tmp_path / f".m.zarr.{2**22 + 1}.ffff0000.old")
    with pytest.raises(ModelStoreError, match="overwrite=True"):
        model.save(path)
    assert open_model(path).model_id == model.model_id
