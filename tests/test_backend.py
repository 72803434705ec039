"""--backend ray: the same folds, seeds and files as the local backend; failures named by their fold; Ray imported
only when asked for. The Ray tests start a local Ray of 2 CPUs for this module (about 10-20 s)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch

from nanocrystal.backend import BackendError, import_ray, ray_map
from nanocrystal.config import Config, resolve
from nanocrystal.runs import run_experiment


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, address="local", include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_a_ray_run_resumes_with_the_local_runs_numbers(size_run, tmp_path, ray):
    """The local tiny run with its fold1 removed, finished with --backend ray --resume: fold0 is kept as it was, fold1
    is trained on a Ray worker and gives the local run's metrics, predictions, calibration and weights exactly."""
    copy = tmp_path / "run"
    shutil.copytree(size_run, copy)
    for name in ("fold1.json", "fold1.pt", "metrics.json", "oof_predictions.csv"):
        (copy / name).unlink()
    kept = (copy / "fold0.json").read_bytes()
    cfg = replace(Config.load(size_run / "config.json"), backend="ray", workers=2, save_path=str(copy), resume=True)
    run_experiment(cfg)
    assert (copy / "fold0.json").read_bytes() == kept
    local, remote = (json.loads((run / "fold1.json").read_text()) for run in (size_run, copy))
    for key in ("metrics", "predictions", "calibration", "stages"):
        assert remote[key] == local[key], key
    local_weights, remote_weights = (torch.load(run / "fold1.pt", weights_only=True) for run in (size_run, copy))
    for a, b in zip(local_weights["members"], remote_weights["members"]):
        assert all(torch.equal(a[name], b[name]) for name in a)
    pd.testing.assert_frame_equal(pd.read_csv(copy / "oof_predictions.csv"), pd.read_csv(size_run / "oof_predictions.csv"))
    log = (copy / "log.txt").read_text()
    assert "fold0: done earlier, kept (resume)" in log and "fold1: 2285 training rows" in log  # the worker's lines
    assert not list(copy.glob(".*.part"))


def test_failed_jobs_are_reported_by_name_after_the_others_are_saved(ray):
    saved = {}
    jobs = [("good", Config.from_dict, ({"epochs": 2},)), ("bad input", Config.from_dict, ({"epochs": -1},)),
            ("bug", int, ("x",))]
    with pytest.raises(RuntimeError) as raised:
        ray_map(resolve("tiny"), jobs, saved.__setitem__)
    assert list(saved) == ["good"] and saved["good"].epochs == 2
    lines = str(raised.value).splitlines()
    assert lines[0] == "bad input: --epochs: must be >= 1, got -1"
    assert lines[1].startswith("bug: failed on a Ray worker:") and "invalid literal for int()" in lines[1]
    with pytest.raises(BackendError, match="^only bad: --epochs"):  # bad input alone: one line, no traceback
        ray_map(resolve("tiny"), [("only bad", Config.from_dict, ({"epochs": 0},))], saved.__setitem__)


def test_a_worker_that_dies_is_retried_then_reported(ray):
    with pytest.raises(BackendError, match="^crash: its Ray worker died 3 times"):
        ray_map(resolve("tiny"), [("crash", os._exit, (1,))], lambda *_: None)


def test_ray_is_imported_only_for_the_ray_backend(tmp_path, monkeypatch, capsys):
    """With Ray made unimportable, --backend ray is one line and exit 2 before a run folder exists, and the local
    backend trains as usual (it never imports Ray)."""
    from nanocrystal.cli import train_main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: importing it fails
    args = ["--preset", "tiny", "--n_folds", "2", "--folds", "0", "--epochs", "1", "--calibration_folds", "0"]
    assert train_main(args + ["--backend", "ray", "--save_path", str(tmp_path / "ray")]) == 2
    assert capsys.readouterr().err.strip() == (
        "--backend ray needs Ray: pip install 'nanocrystal[ray]' (or pip install 'ray[tune]')")
    assert not (tmp_path / "ray").exists()
    assert train_main(args + ["--save_path", str(tmp_path / "local")]) == 0
    assert (tmp_path / "local" / "metrics.json").is_file()


def test_import_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendError, match=r"nanocrystal\[ray\]"):
        import_ray()


def test_a_sweep_scores_on_inner_validation_only(capsys):
    """tune's base config: train.py's flags, with --inner_val_frac 0.2 when not given (a sweep never scores the outer
    held-out folds); a bad searched field or value, or a --save_path, is refused before Ray starts."""
    from nanocrystal.cli import main
    from nanocrystal.sweep import SPACES, parse

    args, cfg = parse(["--preset", "tiny", "--n_folds", "3"])
    assert cfg.inner_val_frac == 0.2 and cfg.n_folds == 3 and args.values == SPACES["size_blend"]
    args, cfg = parse(["--search", "lr=0.001,0.004", "blend_models=lgbm+et,et", "--inner_val_frac", "0.3"])
    assert cfg.inner_val_frac == 0.3 and args.values == {"lr": [0.001, 0.004], "blend_models": ["lgbm+et", "et"]}
    for argv, message in ((["--search", "lr=0.001,0.002,0.004", "depth=1,0"], "--depth: must be >= 1, got 0"),
                          (["--search", "wings=2"], "--wings: unknown key"),
                          (["--save_path", "runs/x"], "a sweep writes its trials under --out")):
        assert main(["tune", *argv]) == 2
        assert message in capsys.readouterr().err


def test_a_trial_reports_its_running_inner_score_after_each_fold(tmp_path, monkeypatch):
    """A trial's report after fold k is the mean inner score of its first k folds, read from the run folder it
    writes (each fold's record says scored_on inner); a trial makes no intervals (the sweep never reads them)."""
    tune = pytest.importorskip("ray.tune")
    from nanocrystal.sweep import parse, trial

    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(tune, "get_context", lambda: type("Context", (), {"get_trial_id": lambda self: "t0"})())
    _, cfg = parse(["--preset", "tiny", "--n_folds", "2", "--epochs", "1"])
    assert cfg.calibration_folds == 3  # the tiny preset's
    trial({"lr": 0.004}, json.loads(cfg.to_json()), str(tmp_path))
    run = tmp_path / "trials" / "t0"
    records = [json.loads((run / f"fold{k}.json").read_text()) for k in (0, 1)]
    saved = Config.load(run / "config.json")
    assert [r["scored_on"] for r in records] == ["inner", "inner"] and saved.lr == 0.004
    assert saved.calibration_folds == 0 and not any("calibration" in r for r in records)
    maes = [r["metrics"]["mae"] for r in records]
    assert reports == [{"mae": maes[0], "folds": 1}, {"mae": pytest.approx((maes[0] + maes[1]) / 2), "folds": 2}]


def test_a_gpu_run_on_ray_must_ask_for_a_gpu_share():
    pytest.importorskip("ray")
    from nanocrystal.backend import check, resources

    with pytest.raises(BackendError, match="--device cuda with --backend ray needs --job_gpus"):
        check(resolve("tiny", {"device": "cuda", "backend": "ray"}))
    cfg = resolve("tiny", {"device": "cuda", "backend": "ray", "job_gpus": 0.2, "threads": 3})
    check(cfg)
    assert resources(cfg) == {"num_cpus": 3, "num_gpus": 0.2}


def test_an_address_where_no_cluster_answers_is_refused_before_the_run(tmp_path, capsys):
    pytest.importorskip("ray")
    from nanocrystal.cli import train_main

    assert train_main(["--preset", "tiny", "--backend", "ray", "--ray_address", "127.0.0.1:1", "--save_path",
                       str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("--ray_address 127.0.0.1:1: no Ray cluster answers there (")
    assert not (tmp_path / "run").exists()
