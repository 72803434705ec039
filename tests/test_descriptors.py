"""The descriptor store: counts of the real file, lookup, coverage, and the restricted unpickler."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from nanocrystal.descriptors import DescriptorError, intermediate_name, load_descriptors


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
    with pytest.raises(DescriptorError, match=r"evil.pkl: refusing to load (posix|os)\.system"):
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
