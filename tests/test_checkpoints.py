"""Every way a fold checkpoint can fail to load is one line naming the file and what to do, never torch's advice to
turn the safe loader off."""
from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import zipfile

import pytest
import torch

from nanocrystal.cli import main
from nanocrystal.runs import CheckpointError, load_fold_models, read_checkpoint


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _resaved(source, change):
    checkpoint = torch.load(source, weights_only=True)
    buffer = io.BytesIO()
    torch.save(change(checkpoint), buffer)
    return buffer.getvalue()


def _truncated_zip(source) -> bytes:
    data = source.read_bytes()
    assert zipfile.is_zipfile(io.BytesIO(data))  # torch's own format, cut in half below
    return data[:len(data) // 2]


def _wider_members(checkpoint):  # weights of another model size than its config says
    state = checkpoint["members"][0]
    return {**checkpoint, "members": [{k: torch.cat([v, v]) if v.ndim else v for k, v in state.items()}]}


DAMAGE = {
    "empty": (lambda source, marker: b"", "an empty file"),
    "random bytes": (lambda source, marker: random.Random(0).randbytes(4096), "not a PyTorch checkpoint"),
    "plain pickle": (lambda source, marker: pickle.dumps({"config": {}}, protocol=4), "not a PyTorch checkpoint"),
    "truncated zip": (lambda source, marker: _truncated_zip(source), "damaged or truncated"),
    "code on load": (lambda source, marker: _resaved(source, lambda c: {**c, "hook": RunsACommand(marker)}),
                     "holds Python objects other than tensors and plain data, which could run code: refused"),
    "missing keys": (lambda source, marker: _resaved(source, lambda c: {"config": c["config"]}),
                     "not a fold checkpoint (needs the keys config, encoder, n_shapes, members)"),
    "not a dict": (lambda source, marker: _resaved(source, lambda c: [1, 2]), "not a fold checkpoint"),
    "other model size": (lambda source, marker: _resaved(source, _wider_members),
                         "does not fit this code's models (RuntimeError"),
    "bad config": (lambda source, marker: _resaved(source, lambda c: {**c, "config": {**c["config"], "epochs": "9"}}),
                   "(its config): epochs: expected a whole number below 2^31, got '9'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_each_damaged_checkpoint_is_one_line_with_a_remedy(case, size_run, descriptors, tmp_path, recwarn):
    make, reason = DAMAGE[case]
    marker = tmp_path / "ran"
    path = tmp_path / "fold0.pt"
    path.write_bytes(make(size_run / "fold0.pt", marker))
    with pytest.raises(CheckpointError) as caught:
        load_fold_models(path, descriptors)
    message = str(caught.value)
    assert message.startswith(f"{path}") and reason in message and "\n" not in message
    assert f"re-train the run (python train.py --config {tmp_path / 'config.json'} --save_path NEW)" in message
    assert "weights_only" not in message and "weights only" not in message.lower()
    assert not marker.exists()  # nothing ran
    assert not [str(w.message) for w in recwarn]  # torch's warnings would be more lines on the console


def test_any_random_bytes_are_not_a_checkpoint(tmp_path):
    # torch's reader fails on random bytes with UnpicklingError, IndexError, KeyError, ... (about 1 in 12 not the
    # first): the reason must not depend on which
    path = tmp_path / "fold0.pt"
    for seed in range(200):
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint;"):
            read_checkpoint(path)


def test_predict_with_a_damaged_checkpoint_exits_2_with_one_line(size_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(size_run, run)
    (run / "fold1.pt").write_bytes(DAMAGE["code on load"][0](size_run / "fold1.pt", tmp_path / "ran"))
    assert main(["predict", "--size-run", str(run), "examples/recipes.csv"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{run / 'fold1.pt'}: holds Python objects")
    assert "weights_only" not in err[0] and not (tmp_path / "ran").exists()
