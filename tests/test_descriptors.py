"""The descriptor store: counts of the real file, lookup, coverage, and the restricted unpickler."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from nanocrystal.descriptors import DescriptorError, descriptor_table, intermediate_name, load_descriptors


def test_real_store(descriptors, dataset):
    assert len(descriptors.vectors) == 1800 and descriptors.dim == 512
    intermediates = descriptors.intermediates()
    assert len(intermediates) == 910 and all("@" in name for name in intermediates)
    assert descriptors.get("PlaceHolder").tolist() == [0.0] * 512 and "PlaceHolder" in descriptors
    assert descriptors.get("PbO").dtype == np.float32 and np.abs(descriptors.get("PbO")).sum() > 0
    coverage = descriptors.coverage(dataset.recipes)
    assert sum(coverage["reagents"].values()) == 0
    assert len(coverage["products"]) == 15 and sum(coverage["products"].values()) == 17
    assert coverage["products"]["C3H18N3Bi2Br9"] == 2 and "Cs2NaYbCl6" in coverage["products"]
    with pytest.raises(DescriptorError, match="no descriptor for substance 'Cs2NaYbCl6'"):
        descriptors.get("Cs2NaYbCl6")


def test_intermediate_names(descriptors):
    name = descriptors.intermediates()[0]
    first, second = name.split("@", 1)
    assert intermediate_name(first, second) == name


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"PbO": RunsACommand(marker)}))
    with pytest.raises(DescriptorError, match=r"evil.pkl: refusing to load '(posix|os)\.system'"):
        load_descriptors(path)
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    ([1.0, 2.0], "expected a dict"),
    ({"PbO": [1.0, 2.0]}, "entry 'PbO' is not a str -> 1-d numpy array"),
    ({"PbO": np.zeros(4), "Se": np.zeros(5)}, "different lengths"),
])
def test_wrong_content_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DescriptorError, match=message):
        load_descriptors(path)


def test_small_valid_store(tmp_path):
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"PbO": np.arange(3, dtype=np.float64), "PbO@Se": np.ones(3)}))
    store = load_descriptors(path)
    assert store.get("PbO").dtype == np.float32 and store.get("PbO").tolist() == [0, 1, 2]
    assert store.intermediates() == ["PbO@Se"]


def test_3000_damaged_or_random_pickles_are_each_a_descriptor_error():
    """Bytes flipped, cut or inserted in a valid descriptor pickle, and random bytes: the loader returns a valid
    table or raises DescriptorError naming the file; no OverflowError, MemoryError, TypeError, ... escapes (and no
    crash inside numpy: its __setstate__ never sees the bytes)."""
    rng = np.random.default_rng(0)
    valid = pickle.dumps({"PbO": np.arange(4, dtype=np.float32), "PbO@Se": np.ones(4)}, protocol=4)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(3000):
        data = bytearray(valid)
        position = int(rng.integers(len(data)))
        kind = case % 4
        if kind == 0:
            for spot in rng.integers(len(data), size=int(rng.integers(1, 5))):
                data[spot] = int(rng.integers(256))
        elif kind == 1:
            data = data[:position]
        elif kind == 2:
            data[position:position] = rng.bytes(int(rng.integers(1, 9)))
        else:
            data = bytearray(rng.bytes(int(rng.integers(0, 200))))
        try:
            vectors = descriptor_table(bytes(data), "feats.pkl")
        except DescriptorError as error:
            assert str(error).startswith("feats.pkl: ") and "\n" not in str(error)
            outcomes["refused"] += 1
        else:
            assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in vectors.values())
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 2500 and outcomes["loaded"] > 0  # most damage is caught; some is harmless


@pytest.mark.parametrize("content,message", [
    ({}, "holds no descriptors"),
    ({"PbO": np.array(["a", "b"])}, "array type 'U1' is not a number type"),
    ({"PbO": np.zeros((2, 2))}, "is not a str -> 1-d numpy array of numbers"),
    ({"PbO": np.array([1e39, 0.0])}, "not finite in float32"),
    ({"PbO": np.zeros(0)}, "descriptors must have 1 to 65,536 values"),
])
def test_contents_the_models_cannot_use_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DescriptorError, match=message):
        load_descriptors(path)
