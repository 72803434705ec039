"""train.py, `python -m nanocrystal <command>` and augment.py: an expected error is one line and exit 2, Ctrl-C one
line and exit 130, a bug keeps its traceback."""
from __future__ import annotations

import os
import signal
import time

import pytest
from filelock import FileLock

import augment
import nanocrystal.runs
from nanocrystal.cli import main, train_main
from nanocrystal.runs import LOCK_FILE


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python raises KeyboardInterrupt on SIGINT unless it started with SIGINT ignored, as a non-interactive shell's
    background job (`cmd &`) does: the tests must not depend on how pytest was started."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt(*_, **__):
    """What Ctrl-C does: SIGINT to this process (Python's handler raises KeyboardInterrupt where it runs)."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # the signal interrupts the sleep
    raise AssertionError("SIGINT was not delivered")


def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(nanocrystal.runs, "run_fold", interrupt)  # Ctrl-C while the first fold trains
    assert train_main(["--preset", "tiny", "--folds", "0", "--save_path", str(run)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    FileLock(run / LOCK_FILE).acquire(timeout=0)  # the folder is free again: --resume can finish it
    assert not [p for p in run.iterdir() if p.name.endswith(".part")]


def test_ctrl_c_in_a_command_and_in_augment(recipes_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("nanocrystal.recipes.pool_counts", interrupt)
    assert main(["validate", str(recipes_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    monkeypatch.setattr(augment, "augment_split", interrupt)
    assert augment.main(["--out", str(tmp_path / "aug")]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_expected_errors_are_one_line_and_exit_2(tmp_path, capsys):
    for run, args in [(augment.main, ["--object_name", "Unobtainium", "--out", str(tmp_path / "aug")]),
                      (main, ["fetch", "--root", str(tmp_path), "--mirror", str(tmp_path / "no mirror")]),
                      (train_main, ["--preset", "tiny", "--resume"])]:
        assert run(args) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "aug").exists()


def test_a_bug_keeps_its_traceback(recipes_path, monkeypatch):
    def bug(*_):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("nanocrystal.recipes.pool_counts", bug)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["validate", str(recipes_path)])


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e39", "eight"])
def test_design_refuses_a_target_size_that_is_not_a_finite_number(value, capsys):
    with pytest.raises(SystemExit) as caught:  # argparse, before any run folder is read
        main(["design", "--size-run", "x", "--template", "x", "--vary", "Time=1:2", f"--target-size={value}"])
    assert caught.value.code == 2
    assert f"argument --target-size: {value!r} is not a" in capsys.readouterr().err
