"""The training engine and run folders, on small slices of the real data with the tiny preset (seconds)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from filelock import FileLock

from nanocrystal.config import config_from_args
from nanocrystal.config import ROOT, resolve
from nanocrystal.encode import MEASURED_SIZE, encode, fit_encoder
from nanocrystal.engine import ensemble_predict, epoch_order, size_loss, train_member
from nanocrystal.runs import (LOCK_FILE, RunError, fold_data, inner_fold, load_fold_models, make_model_factory,
                              run_experiment)
from nanocrystal.splits import paper_folds, product_folds


@pytest.fixture(scope="module")
def fold0_data(table):
    cfg = resolve("tiny")
    return cfg, fold_data(cfg, table, paper_folds(table, 5, 0)[0], 11)


def test_training_rows_never_hold_a_validation_row(table, fold0_data):
    cfg, data = fold0_data
    assert not data.train["ID"].isin(data.valid["ID"]).any()
    assert len(data.valid) == 124 and (data.train["Y1"] > 0).all() and (data.train["Y1"] <= 20).all()
    inner = inner_fold(table, paper_folds(table, 5, 0)[0], resolve("tiny", {"inner_val_frac": 0.2}))
    outer_valid = paper_folds(table, 5, 0)[0].valid
    assert not np.isin(inner.valid, outer_valid).any() and not np.isin(inner.train, outer_valid).any()
    assert not np.isin(inner.valid, inner.train).any()


def test_leave_one_product_out_tunes_on_whole_other_products(table):
    """--inner_val_frac with --object_name: the tuning rows are every sized row of some training products, none of
    whose rows trains, as in the outer split."""
    outer = product_folds(table, ["PbSe"])[0]
    inner = inner_fold(table, outer, resolve("tiny", {"inner_val_frac": 0.2, "object_name": ["PbSe"]}))
    products = table["T2"].to_numpy()
    sized = (table["Y1"] > 0) & (table["Y1"] <= 20)
    held = set(products[inner.valid])
    with_sizes = set(products[outer.train][sized.to_numpy()[outer.train]])
    assert "PbSe" not in held and len(held) == round(0.2 * len(with_sizes))
    assert not held & set(products[inner.train])
    assert set(inner.valid) == set(np.flatnonzero(table["T2"].isin(held) & sized))


def test_scalers_see_no_validation_row(fold0_data, descriptors):
    cfg, data = fold0_data
    before = fit_encoder(data.train, descriptors, "log", True, False)
    shifted = data.valid.copy()
    shifted[["Temperature1", "Temperature2", "Time", "A1"]] *= 7.0  # only validation rows change
    again = fold_data(cfg, pd.concat([data.train, shifted]).reset_index(drop=True), _same_fold(data), 11)
    after = fit_encoder(again.train, descriptors, "log", True, False)
    assert before == after


def _same_fold(data):
    from nanocrystal.splits import Fold

    n_train = len(data.train)
    return Fold(0, "fold0", np.arange(n_train), np.arange(n_train, n_train + len(data.valid)))


def test_weak_rows_are_those_counted_on_fewer_than_300_particles(fold0_data):
    _, data = fold0_data
    np.testing.assert_array_equal(data.train_weak, data.train["Num"].to_numpy() < 300)
    assert 0 < data.train_weak.sum() < len(data.train)


def test_the_measured_size_and_the_product_token_enter_only_when_asked(fold0_data, descriptors):
    _, data = fold0_data
    rows = data.train.head(8)
    plain = encode(rows, fit_encoder(data.train, descriptors, "log", False, False))
    assert MEASURED_SIZE not in fit_encoder(data.train, descriptors, "log", False, False).condition_names
    assert not (plain.present & plain.is_product).any()  # --no-use_product: no product token at all
    encoder = fit_encoder(data.train, descriptors, "log", True, True)
    column = encoder.condition_names.index(MEASURED_SIZE)
    batch = encode(rows, encoder)
    expected = (np.log(rows["Y1"].to_numpy()) - encoder.condition_center[column]) / encoder.condition_scale[column]
    np.testing.assert_allclose(batch.conditions[:, column].numpy(), expected, rtol=1e-5)
    assert (batch.present & batch.is_product).sum(axis=1).eq(1).all()  # one product token per recipe


def test_weak_rows_within_the_band_contribute_no_loss(fold0_data, descriptors):
    cfg, data = fold0_data
    encoder = fit_encoder(data.train, descriptors, "log", True, False)
    batch = encode(data.train.head(4), encoder, np.array([True, True, False, False]))
    target = batch.size_nm
    inside = target * 1.1  # within 15% of the label
    loss_weak_inside = size_loss(torch.cat([inside[:2], target[2:]]), batch, cfg)
    assert loss_weak_inside.item() == 0.0  # weak rows inside the band are skipped, exact solid rows cost 0
    solid_off = torch.cat([target[:2], inside[2:]])
    assert size_loss(solid_off, batch, cfg).item() > 0.0  # the same error on solid rows counts
    outside = target * 1.2  # beyond the 15% band: a weak row counts like a solid one
    weak_off = size_loss(torch.cat([outside[:2], target[2:]]), batch, cfg).item()
    assert weak_off > 0.0


def test_loss_decreases(fold0_data, descriptors):
    cfg, data = fold0_data
    cfg = resolve("tiny", {"epochs": 8, "lr": 3e-3, "batch_size": 64})
    train = data.train.head(400)
    encoder = fit_encoder(train, descriptors, "log", True, False)
    batch = encode(train, encoder)
    snapshots, losses = train_member(make_model_factory(cfg, encoder, descriptors, 11), batch, cfg, seed=0)
    assert losses[-1] < 0.7 * losses[0]
    assert len(snapshots) == 1


def test_an_epoch_takes_every_recipe_row_and_a_fresh_share_of_the_failures():
    failed = torch.arange(4000) >= 1000  # 1,000 recipe rows, then 3,000 failures
    full = epoch_order(failed, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(full, torch.randperm(4000, generator=torch.Generator().manual_seed(0)))  # share 1: a plain permutation
    generator = torch.Generator().manual_seed(0)
    first, second = epoch_order(failed, 0.2, generator), epoch_order(failed, 0.2, generator)
    for order in (first, second):
        assert len(set(order.tolist())) == len(order)  # no row twice
        assert set(order[~failed[order]].tolist()) == set(range(1000))  # every recipe row, every epoch
        assert 500 < int(failed[order].sum()) < 700  # about 0.2 x 3,000 failures
    assert set(first[failed[first]].tolist()) != set(second[failed[second]].tolist())  # drawn afresh
    with pytest.raises(ValueError, match="failure_fraction"):
        resolve("tiny", {"failure_fraction": 0.0})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = config_from_args(["--preset", "tiny", "--folds", "0", "1", "--save_path", str(run_dir), "--threads", "1"])
    run_experiment(cfg, command="test")
    return run_dir


def test_a_finished_run_closes_its_log_file(tiny_run):
    import logging

    handlers = logging.getLogger(f"nanocrystal.{tiny_run}").handlers  # pytest adds its own capture handlers
    assert not [h for h in handlers if isinstance(h, logging.FileHandler) or type(h) is logging.StreamHandler]
    assert "- eval - mae:" in (tiny_run / "log.txt").read_text()


def test_run_folder_holds_everything(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["per_fold"]] == ["fold0", "fold1"]
    assert metrics["mean"]["mae"] == pytest.approx(np.mean([f["mae"] for f in metrics["per_fold"]]))
    oof = pd.read_csv(tiny_run / "oof_predictions.csv")
    assert len(oof) == 248 and set(oof.columns) >= {"ID", "fold", "true", "pred"}
    assert np.mean(np.abs(oof["true"] - oof["pred"])) == pytest.approx(metrics["mean"]["mae"], rel=0.02)
    tail = (tiny_run / "log.txt").read_text().strip().splitlines()[-7:]
    assert [line.split("- eval - ")[1].split(":")[0] for line in tail] == ["mae", "mse", "rmse", "mape", "r2",
                                                                           "coverage", "width"]
    assert float(tail[0].rsplit(" ", 1)[1]) == pytest.approx(metrics["mean"]["mae"], abs=1e-4)
    # the intervals: oof columns lo, hi beside pred; coverage and width per fold, their mean, and by series
    assert (oof["lo"] < oof["pred"]).all() and (oof["pred"] < oof["hi"]).all()
    inside = (oof["true"] >= oof["lo"]) & (oof["true"] <= oof["hi"])
    per_fold = inside.groupby(oof["fold"]).mean()
    assert [f["coverage"] for f in metrics["per_fold"]] == pytest.approx(per_fold.loc[["fold0", "fold1"]].tolist())
    assert float(tail[-2].rsplit(" ", 1)[1]) == pytest.approx(metrics["mean"]["coverage"], abs=1e-4)
    assert float(tail[-1].rsplit(" ", 1)[1]) == pytest.approx(metrics["mean"]["mean_width_nm"], abs=1e-4)
    u = metrics["uncertainty"]
    assert u["confidence"] == 0.9 and u["coverage"] == pytest.approx(inside.mean())
    seen = oof["series"] == "seen"
    assert u["seen_series"]["rows"] == seen.sum() and u["new_series"]["coverage"] == pytest.approx(inside[~seen].mean())
    assert u["baseline"]["mean_width_nm"] == pytest.approx((oof["baseline_hi"] - oof["baseline_lo"]).mean())


def test_checkpoint_round_trips_to_identical_predictions(tiny_run, table, descriptors):
    fold = load_fold_models(tiny_run / "fold0.pt", descriptors)
    valid = table.iloc[paper_folds(table, 5, 0)[0].valid]
    prediction = ensemble_predict(fold.members, encode(valid, fold.encoder))["size"]
    oof = pd.read_csv(tiny_run / "oof_predictions.csv")
    saved = oof.loc[oof["fold"] == "fold0", "pred"].to_numpy()
    np.testing.assert_allclose(prediction, saved, rtol=1e-5, atol=1e-5)


def test_a_run_folder_is_never_overwritten(tiny_run):
    before = (tiny_run / "metrics.json").read_text()
    cfg = config_from_args(["--preset", "tiny", "--folds", "0", "1", "--save_path", str(tiny_run)])
    with pytest.raises(RunError, match="already holds a run"):
        run_experiment(cfg)
    assert (tiny_run / "metrics.json").read_text() == before


def test_resume_trains_only_the_missing_folds(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "fold1.json").unlink()
    (copy / "metrics.json").unlink()
    kept = (copy / "fold0.json").read_text()
    saved = json.loads((tiny_run / "config.json").read_text())
    cfg = config_from_args(["--config", str(tiny_run / "config.json"), "--save_path", str(copy), "--resume"])
    assert cfg.folds == saved["folds"] and cfg.preset == "tiny"
    run_experiment(cfg)
    assert (copy / "fold0.json").read_text() == kept  # fold 0 was not retrained
    assert json.loads((copy / "metrics.json").read_text())["per_fold"][1]["fold"] == "fold1"
    changed = config_from_args(["--config", str(tiny_run / "config.json"), "--save_path", str(copy), "--resume",
                                "--epochs", "2"])
    with pytest.raises(RunError, match="--resume needs the same config"):  # its folds would not be one run
        run_experiment(changed)


def test_config_file_reruns_the_same_run(tiny_run, tmp_path):
    again = tmp_path / "again"
    cfg = config_from_args(["--config", str(tiny_run / "config.json"), "--save_path", str(again), "--folds", "0"])
    run_experiment(cfg)
    first = json.loads((tiny_run / "fold0.json").read_text())["metrics"]
    second = json.loads((again / "fold0.json").read_text())["metrics"]
    assert second == pytest.approx(first, rel=1e-6)  # seeded: the same numbers, not just close ones


@pytest.mark.parametrize("flags,message", [
    (["--folds", "0", "7"], "--folds 7: no such fold \\(0..4\\)"),
    (["--object_name", "Unobtainium"], "--object_name 'Unobtainium': no recipe has this product"),
    (["--model", "xgb"], "--model 'xgb': choose from transformer"),
])
def test_a_bad_setting_stops_before_a_run_folder_exists(flags, message, tmp_path):
    cfg = config_from_args(["--preset", "tiny", "--save_path", str(tmp_path / "run"), *flags])
    with pytest.raises(RunError, match=message):
        run_experiment(cfg)
    assert not (tmp_path / "run").exists()  # the corrected command can use the same --save_path


def test_bad_task_split_resume_or_config_file_are_refused(tmp_path, capsys):
    from nanocrystal.cli import train_main

    for flags, message in [(["--task", "sizes"], "--task 'sizes': choose from size, shape"),
                           (["--split", "grouppd"], "--split 'grouppd': choose from paper, grouped")]:
        with pytest.raises(ValueError, match=message):
            config_from_args(flags)
    with pytest.raises(RunError, match="--resume needs --save_path"):  # a new timestamped folder would resume nothing
        run_experiment(config_from_args(["--preset", "tiny", "--resume"]))
    assert train_main(["--config", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
    saved = tmp_path / "config.json"
    saved.write_text(config_from_args([]).to_json())
    with pytest.raises(ValueError, match="--preset cannot be combined with --config"):  # it would apply no values
        config_from_args(["--config", str(saved), "--preset", "tiny"])


def test_help_shows_the_defaults_a_run_gets():
    from nanocrystal.config import config_parser

    cpu = config_from_args([])
    assert (cpu.preset, cpu.tree_blend, cpu.lgbm_seeds, cpu.series_correction) == ("cpu", 0.8, 3, True)
    helps = {a.dest: a.help for a in config_parser()._actions if a.option_strings[:1] == [f"--{a.dest}"]}
    assert helps["tree_blend"] == "(default 0.8)" and helps["lgbm_seeds"] == "(default 3)"
    assert helps["series_correction"] == "(default True)" and helps["preset"] == "(default 'cpu')"


def test_a_folder_in_use_is_refused_and_left_alone(tmp_path):
    """While another process holds the run folder's lock (filelock, as a training does for its whole run), neither
    a new run nor --resume starts there, and nothing is written into it."""
    run = tmp_path / "run"
    run.mkdir()
    with FileLock(run / LOCK_FILE):
        for extra in ([], ["--resume"]):
            cfg = config_from_args(["--preset", "tiny", "--folds", "0", "--save_path", str(run), *extra])
            with pytest.raises(RunError, match=f"^{run}: another training is running in this folder; wait for it"):
                run_experiment(cfg)
    assert [p.name for p in run.iterdir()] == [LOCK_FILE]


def test_two_trainings_on_one_folder_exactly_one_runs(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "train.py", "--preset", "tiny", "--folds", "0", "--epochs", "1", "--threads", "1",
               "--save_path", str(run)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    (ran, ran_err), (refused, refused_err) = sorted((p.returncode, err) for p, err in zip(processes, errors))
    assert (ran, refused) == (0, 2) and ran_err == ""  # no progress bar without a terminal
    # refused by the lock, or (had the first already written its config) as a folder holding a run
    assert len(refused_err.splitlines()) == 1 and refused_err.startswith(str(run))
    assert "another training is running" in refused_err or "already holds a run" in refused_err
    log = (run / "log.txt").read_text()
    assert log.count(f"run {run} (") == 1 and log.count("- eval - mae") == 1  # one run wrote the log


def test_progress_is_logged_as_lines_without_a_terminal(tiny_run):
    """No terminal (pytest captures the output): no tqdm bar, a line per fifth of a member's epochs in the log."""
    lines = (tiny_run / "log.txt").read_text().splitlines()
    progress = [line.split("[INFO]: ")[1] for line in lines if "epochs, member" in line]
    assert [p.split(", loss")[0] for p in progress if p.startswith("fold0")] == [
        f"fold0 transformer: {k}/3 epochs, member 1/1, epoch {k}/3" for k in (1, 2, 3)]
    assert all(float(p.rsplit("loss ", 1)[1]) > 0 for p in progress)
    assert "\r" not in "".join(lines)


def children(pid: int) -> set[int]:
    """The child processes of `pid` (Linux: /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:  # the thread ended meanwhile
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_sigterm_ends_the_run_and_its_worker_processes(tmp_path):
    """`kill` (or a scheduler's cancel) of a run with --workers 2: one line, exit 143, no worker left training
    unwatched, the folder's lock free for --resume."""
    run = tmp_path / "run"
    command = [sys.executable, "train.py", "--preset", "tiny", "--n_folds", "2", "--workers", "2", "--epochs", "500",
               "--threads", "1", "--calibration_folds", "0", "--save_path", str(run)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(workers := children(process.pid)) < 2 or not (run / "log.txt").exists() or \
            "training rows" not in (run / "log.txt").read_text():  # both workers spawned, one with its fold
        assert time.time() < deadline and process.poll() is None, "the run's workers did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and err.splitlines()[-1] == "terminated"
    deadline = time.time() + 30
    while any(alive(pid) for pid in workers):
        assert time.time() < deadline, "a worker outlived its run"
        time.sleep(0.2)
    FileLock(run / LOCK_FILE).acquire(timeout=0)
    assert not [p for p in run.iterdir() if p.name.endswith(".part")] and not (run / "metrics.json").exists()


def test_folds_in_worker_processes_end_without_noise(tmp_path):
    """--workers 2: the workers finish and exit on their own; stopping them at the end printed tracebacks from their
    clean-up (torch's finalizers interrupted by SIGTERM)."""
    run = tmp_path / "run"
    command = [sys.executable, "train.py", "--preset", "tiny", "--n_folds", "2", "--workers", "2", "--epochs", "1",
               "--threads", "1", "--calibration_folds", "0", "--save_path", str(run)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == ""
    assert {"fold0.json", "fold1.json", "metrics.json"} <= {p.name for p in run.iterdir()}
