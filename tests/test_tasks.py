"""Shape classification with the failure class, and leave-one-product-out: splits, losses and metrics on the real data
(no training except one tiny one-epoch shape fold)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from nanocrystal.config import config_from_args
from nanocrystal.config import resolve
from nanocrystal.encode import encode, fit_encoder
from nanocrystal.engine import shape_loss, size_loss, task_loss
from nanocrystal.metrics import mean_metrics, shape_metrics, size_metrics
from nanocrystal.recipes import has_size
from nanocrystal.runs import fold_data, run_experiment, score, val_selected
from nanocrystal.splits import paper_folds, product_folds, run_folds
from nanocrystal.report import ReportError, load_run
from nanocrystal.task_tables import main, product_table, seeds_table, shots_table

PRODUCTS = ["PbSe", "Ag2S", "Ni", "Cs2NaBiCl6"]
N_SHAPES = 11


@pytest.mark.parametrize("task", ["size", "shape"])
def test_a_held_out_product_has_no_training_row(table, task):
    cfg = config_from_args(["--preset", "tiny", "--task", task, "--object_name", *PRODUCTS])
    assert cfg.object_name == PRODUCTS
    folds = run_folds(cfg, table)
    assert [f.name for f in folds] == PRODUCTS
    size_rows = int((has_size(table) & ~table["failed"]).sum())
    for fold in folds:
        data = fold_data(cfg, table, fold, N_SHAPES)
        assert not (data.train["T2"] == fold.name).any()
        assert (data.valid["T2"] == fold.name).all()
        assert ((data.valid["Y1"] > 0) & (data.valid["Y1"] <= 20)).all()
        if task == "size":  # every other product's size rows train: nothing else is lost
            assert len(data.train) + len(data.valid) == size_rows
    assert [len(fold.valid) for fold in folds] == [321, 59, 21, 12]


def test_an_unknown_product_is_refused_by_name(table):
    with pytest.raises(ValueError, match="'PbSeX'"):
        product_folds(table, ["PbSeX"])


@pytest.fixture(scope="module")
def mixed_rows(table):
    """Six real recipes with a size, then six real failed syntheses."""
    recipes = table[~table["failed"] & (table["Y1"] > 0) & (table["Y1"] <= 20)].head(6)
    return pd.concat([recipes, table[table["failed"]].head(6)], ignore_index=True)


def test_failure_rows_never_enter_the_size_loss(mixed_rows, descriptors):
    cfg = resolve("tiny")
    batch = encode(mixed_rows, fit_encoder(mixed_rows, descriptors, "log", False, False))
    assert (batch.size_nm[6:] == -1).all()
    pred = torch.full((12,), 40.0, requires_grad=True)  # far from every label: each counted row costs
    loss = size_loss(pred, batch, cfg)
    loss.backward()
    assert pred.grad[6:].abs().sum().item() == 0.0 and (pred.grad[:6] != 0).all()
    recipes_only = size_loss(pred.detach()[:6], batch.index(torch.arange(6)), cfg)
    assert loss.item() == pytest.approx(recipes_only.item())


def test_the_shape_loss_scores_failures_only_with_the_failed_logit(mixed_rows, descriptors):
    batch = encode(mixed_rows, fit_encoder(mixed_rows, descriptors, "log", False, False))
    assert (batch.shape[6:] == N_SHAPES).all() and (batch.shape[:6] < N_SHAPES).all()
    logits = torch.randn(12, N_SHAPES, generator=torch.Generator().manual_seed(0))
    failed_logit = torch.linspace(-2, 2, 12)
    expected = (torch.nn.functional.cross_entropy(logits[:6], batch.shape[:6])
                + torch.nn.functional.binary_cross_entropy_with_logits(failed_logit, (torch.arange(12) >= 6).float()))
    assert shape_loss(logits, failed_logit, batch).item() == pytest.approx(expected.item())


def test_the_size_task_adds_the_known_shapes_cross_entropy_at_its_weight(mixed_rows, descriptors):
    batch = encode(mixed_rows, fit_encoder(mixed_rows, descriptors, "log", False, False))
    batch.shape[0] = -1  # an unknown shape: no shape loss for it
    logits = torch.randn(12, N_SHAPES, generator=torch.Generator().manual_seed(0))
    out = {"size": torch.full((12,), 5.0), "shape": logits, "failed": torch.zeros(12)}
    plain = task_loss(out, batch, resolve("tiny"))
    assert plain.item() == pytest.approx(size_loss(out["size"], batch, resolve("tiny")).item())
    shapes = torch.nn.functional.cross_entropy(out["shape"][1:6], batch.shape[1:6])  # neither unknown nor failed
    with_shapes = task_loss(out, batch, resolve("tiny", {"shape_aux_weight": 0.3}))
    assert with_shapes.item() == pytest.approx(plain.item() + 0.3 * shapes.item())


def test_failure_rows_never_enter_the_shape_metrics(table):
    cfg = resolve("tiny", {"task": "shape"})
    scored = table.iloc[paper_folds(table)[0].valid]
    frame = pd.concat([scored, table[table["failed"]].head(50)], ignore_index=True)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(N_SHAPES), size=len(frame))
    result = score(cfg, frame, {"shape": probabilities}, N_SHAPES)
    true, pred = scored["Y3"].to_numpy(), probabilities[:len(scored)].argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(true, pred, average="weighted", zero_division=0)
    assert result["accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((precision, recall, f1))
    assert np.sum(result["confusion"]) == len(scored) == 124
    probabilities[len(scored):] = rng.dirichlet(np.ones(N_SHAPES), size=50)  # other guesses on failures: no change
    assert score(cfg, frame, {"shape": probabilities}, N_SHAPES) == result


def test_size_metrics_and_fold_means_on_a_fixed_example():
    result = size_metrics(np.array([2.0, 4.0, 10.0]), np.array([3.0, 3.0, 12.0]))  # errors 1, -1, 2
    assert result["mae"] == pytest.approx(4 / 3) and result["mse"] == pytest.approx(2.0)
    assert result["rmse"] == pytest.approx(np.sqrt(2.0))
    assert result["mape"] == pytest.approx((1 / 2 + 1 / 4 + 2 / 10) / 3)
    assert result["r2"] == pytest.approx(1 - 6 / (104 / 3))  # squared errors 6; spread around the mean 16/3: 104/3
    assert mean_metrics([{"mae": 1.0}, {"mae": 2.0}, {"mae": 6.0}], ("mae",)) == {"mae": 3.0}


def test_val_selected_takes_each_folds_best_point_on_its_own_rows():
    curves = [{"fold": "fold0", "val_curve": [{"accuracy": 0.5, "epoch": 5}, {"accuracy": 0.8, "epoch": 10},
                                              {"accuracy": 0.7, "epoch": 15}]},
              {"fold": "fold1", "val_curve": [{"accuracy": 0.9, "epoch": 5}, {"accuracy": 0.6, "epoch": 10}]}]
    chosen = val_selected(curves, ("accuracy",))
    assert [p["epoch"] for p in chosen["per_fold"]] == [10, 5] and chosen["mean"] == {"accuracy": pytest.approx(0.85)}
    sizes = [{"fold": "fold0", "val_curve": [{"mae": 2.0, "epoch": 5}, {"mae": 1.5, "epoch": 10}]}]
    assert val_selected(sizes, ("mae",))["mean"] == {"mae": 1.5}  # MAE: the smallest


def test_shape_metrics_match_scikit_learn_on_a_fixed_example():
    true = np.array([0, 0, 1, 1, 2, 9])
    pred = np.array([0, 1, 1, 1, 2, 0])
    result = shape_metrics(true, pred, N_SHAPES)
    # per class (P, R, F1, support): 0 (1/2, 1/2, 1/2, 2), 1 (2/3, 1, 4/5, 2), 2 (1, 1, 1, 1), 9 (0, 0, 0, 1)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx((2 * 0.5 + 2 * 2 / 3 + 1) / 6)
    assert result["recall"] == pytest.approx(4 / 6)
    assert result["f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1) / 6)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx(
        precision_recall_fscore_support(true, pred, average="weighted", zero_division=0)[:3])
    confusion = np.zeros((N_SHAPES, N_SHAPES), int)
    for t, p in zip(true, pred):
        confusion[t, p] += 1
    assert result["confusion"] == confusion.tolist()


@pytest.fixture(scope="module")
def tiny_shape_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "shape"
    cfg = config_from_args(["--task", "shape", "--preset", "tiny", "--folds", "0", "--epochs", "1", "--threads", "1",
                            "--no-use_product", "--eval_every", "1", "--save_path", str(run_dir)])
    run_experiment(cfg, command="test")
    return run_dir


def test_a_shape_run_writes_metrics_confusion_probabilities_and_upstream_log_lines(tiny_shape_run):
    metrics = json.loads((tiny_shape_run / "metrics.json").read_text())
    assert metrics["task"] == "shape" and [f["fold"] for f in metrics["per_fold"]] == ["fold0"]
    assert set(metrics["mean"]) == {"accuracy", "f1", "recall", "precision", "set_coverage", "mean_set_size"}
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (N_SHAPES, N_SHAPES) and confusion.sum() == 124
    assert np.trace(confusion) / 124 == pytest.approx(metrics["mean"]["accuracy"])
    oof = pd.read_csv(tiny_shape_run / "oof_predictions.csv")
    probabilities = oof[[f"prob_{k}" for k in range(N_SHAPES)]].to_numpy()
    assert len(oof) == 124 and (oof["true"] < N_SHAPES).all() and oof["p_failed"].between(0, 1).all()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert (oof["pred"] == probabilities.argmax(1)).all()
    assert (oof["pred"] == oof["true"]).mean() == pytest.approx(metrics["mean"]["accuracy"])
    # the prediction sets: indices of the shapes kept, most probable first; coverage and size as in metrics.json
    sets = oof["set"].fillna("").astype(str).str.split("|")
    assert all(s[0] == str(p) for s, p in zip(sets, oof["pred"]) if s != [""])
    inside = np.mean([str(t) in s for t, s in zip(oof["true"], sets)])
    assert inside == pytest.approx(metrics["mean"]["set_coverage"]) == pytest.approx(metrics["uncertainty"]["set_coverage"])
    names = ["accuracy", "f1", "recall", "precision", "set_coverage", "set_size"]
    tail = (tiny_shape_run / "log.txt").read_text().strip().splitlines()[-6:]
    assert [line.split("- eval - ")[1].split(":")[0] for line in tail] == names
    for line, name in zip(tail, names):
        key = "mean_set_size" if name == "set_size" else name
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(metrics["mean"][key], abs=1e-4)


def test_the_run_confusion_matrix_sums_the_folds(shape_run):
    metrics = json.loads((shape_run / "metrics.json").read_text())
    folds = [json.loads((shape_run / f"{fold['fold']}.json").read_text()) for fold in metrics["per_fold"]]
    assert len(folds) == 2
    np.testing.assert_array_equal(metrics["confusion"], np.sum([f["metrics"]["confusion"] for f in folds], axis=0))
    oof = pd.read_csv(shape_run / "oof_predictions.csv")
    assert np.sum(metrics["confusion"]) == len(oof) == 617


def test_best_cls_prints_the_shape_run_beside_the_paper(tiny_shape_run, capsys):
    assert main(["shape", str(tiny_shape_run)]) == 0
    metrics = json.loads((tiny_shape_run / "metrics.json").read_text())
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if "recipe only" in line)
    assert f"| {metrics['mean']['accuracy']:.4f} | {metrics['mean']['f1']:.4f} |" in row
    # --eval_every: upstream's kind of figure on its own line, labelled, from metrics.json's val_selected
    labelled = [line for line in out if "val-selected" in line]
    assert len(labelled) == 1 and "not the result" in labelled[0]
    assert f"accuracy {metrics['val_selected']['mean']['accuracy']:.4f}" in labelled[0]
    assert main(["lopo", str(tiny_shape_run)]) == 2  # a paper-split shape run has no per-product table
    assert "not a leave-one-product-out size run" in capsys.readouterr().err


def test_product_table_reads_each_product_beside_the_paper(tmp_path):
    per_fold = [{"fold": p, "mae": 1.0 + k, "mape": 0.1 * k, "r2": 0.5, "mse": 0, "rmse": 0, "wall_s": 1}
                for k, p in enumerate(["Ni", "Au"])]
    metrics = {"task": "size", "model": "transformer", "split": "lopo", "mean": {}, "per_fold": per_fold}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"fold": ["Ni"] * 3 + ["Au"] * 2}).to_csv(tmp_path / "oof_predictions.csv", index=False)
    table = product_table(load_run(tmp_path))
    assert table.loc["Ni"].to_dict() == pytest.approx(
        {"n": 3, "mae": 1.0, "mape": 0.0, "r2": 0.5, "paper_mae": 2.0056, "mae_minus_paper": 1.0 - 2.0056})
    assert table.loc["Au", "n"] == 2 and np.isnan(table.loc["Au", "paper_mae"])


def test_older_blend_name_still_configures_the_tree_blend(tmp_path):
    # commands recorded by run folders of earlier versions say --lgbm_blend; their config.json says lgbm_blend
    assert config_from_args(["--lgbm_blend", "0.3"]).tree_blend == 0.3
    assert config_from_args([]).tree_blend == 0.8 and config_from_args([]).blend_models == ["lgbm", "et"]
    older = tmp_path / "config.json"
    older.write_text(json.dumps({"lgbm_blend": 0.25, "task": "shape"}))
    cfg = config_from_args(["--config", str(older)])
    assert (cfg.tree_blend, cfg.task) == (0.25, "shape")


def test_an_unknown_blend_model_stops_before_training():
    with pytest.raises(ValueError, match="--blend_models: hgb cannot be blended; choose from lgbm, et, rf"):
        config_from_args(["--blend_models", "lgbm", "hgb"])


def test_eval_every_records_the_upstream_style_figure_apart_from_the_result(tmp_path):
    run_dir = tmp_path / "curve"
    cfg = resolve("tiny", {"task": "size", "folds": [0, 1], "epochs": 3, "eval_every": 1, "threads": 1,
                           "save_path": str(run_dir)})
    run_experiment(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = metrics["val_selected"]["per_fold"]
    assert [c["fold"] for c in chosen] == ["fold0", "fold1"]
    for fold, point in zip(["fold0", "fold1"], chosen):
        record = json.loads((run_dir / f"{fold}.json").read_text())
        curve = record["val_curve"]
        assert [(p["member"], p["epoch"]) for p in curve] == [(0, 1), (0, 2), (0, 3)]
        assert point["mae"] == min(p["mae"] for p in curve)  # chosen on the held-out rows: upstream's way
        # the last curve point is the final transformer alone, the stage the run's result starts from
        assert curve[-1]["mae"] == pytest.approx(record["stages"]["transformer"]["mae"], rel=1e-5)
    assert metrics["val_selected"]["mean"]["mae"] == pytest.approx(np.mean([c["mae"] for c in chosen]))
    assert metrics["mean"]["mae"] == pytest.approx(np.mean([f["mae"] for f in metrics["per_fold"]]))
    lines = (run_dir / "log.txt").read_text().strip().splitlines()
    # the labelled figure and the plain baseline come just before upstream's `- eval -` lines (then coverage and
    # width), which end the log and carry the result
    assert ["- eval - " in line for line in lines[-9:]] == [False, False] + [True] * 7
    assert lines[-9].split("[INFO]: ")[1].startswith("val-selected, upstream style")
    assert lines[-8].split("[INFO]: ")[1].startswith("plain baseline")
    assert f"mae {metrics['val_selected']['mean']['mae']:.4f}" in lines[-9]
    assert float(lines[-7].rsplit(" ", 1)[1]) == pytest.approx(metrics["mean"]["mae"], abs=1e-4)
    assert sum("fold0 val-selected curve (not the result)" in line for line in lines) == 3


def test_shots_table_compares_each_k_with_zero_shot_on_the_same_recipes(tmp_path):
    """Two products; the 1-shot run scores, per draw, the product's recipes left out; its zero-shot figure is the
    zero-shot run's error on those very recipes."""
    def run(name: str, shots: int, folds: dict[str, list[tuple[int, float, float]]]) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"shots": shots, "object_name": ["A", "B"]}))
        per_fold = [{"fold": f, "mae": 0.0} for f in folds]
        (path / "metrics.json").write_text(json.dumps({"task": "size", "model": "lgbm", "split": "lopo", "mean": {},
                                                       "per_fold": per_fold}))
        rows = [{"ID": i, "fold": f, "true": t, "pred": p} for f, items in folds.items() for i, t, p in items]
        pd.DataFrame(rows).to_csv(path / "oof_predictions.csv", index=False)
        return path

    zero = run("zero", 0, {"A": [(1, 5.0, 7.0), (2, 5.0, 9.0), (3, 5.0, 5.0)], "B": [(4, 3.0, 4.0), (5, 3.0, 6.0)]})
    one = run("one", 1, {"A-1shot-0": [(2, 5.0, 6.0), (3, 5.0, 5.0)], "A-1shot-1": [(1, 5.0, 5.5), (3, 5.0, 5.5)],
                         "B-1shot-0": [(5, 3.0, 3.0)], "B-1shot-1": [(4, 3.0, 3.5)]})
    table = shots_table([load_run(zero), load_run(one)])
    assert table.loc[("A", 0), "mae"] == pytest.approx(2.0) and table.loc[("A", 0), "reduction"] == pytest.approx(0)
    # A, 1 shot: draws 0.5 and 0.5; zero-shot on the same recipes: (4 + 0) / 2 and (2 + 0) / 2
    assert table.loc[("A", 1), ["draws", "mae", "zero_shot_mae"]].tolist() == pytest.approx([2, 0.5, 1.5])
    assert table.loc[("A", 1), "reduction"] == pytest.approx(1 - 0.5 / 1.5)
    assert table.loc[("B", 1), ["mae", "zero_shot_mae"]].tolist() == pytest.approx([0.25, 2.0])
    assert main(["shots", str(zero), str(one), "--plot", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 1000
    with pytest.raises(ReportError, match="exactly one of them without --shots"):
        shots_table([load_run(one)])


def test_seeds_table_gives_each_seed_and_their_mean_and_spread(tmp_path):
    def run(seed: int, mae: float, extra: dict | None = None) -> Path:
        path = tmp_path / f"seed{seed}{'x' if extra else ''}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"seed": seed, "task": "size", **(extra or {})}))
        (path / "metrics.json").write_text(json.dumps({"task": "size", "model": "transformer", "split": "paper",
                                                       "seed": seed, "mean": {"mae": mae, "r2": 0.7},
                                                       "per_fold": []}))
        return path

    table = seeds_table([load_run(run(0, 1.4)), load_run(run(1, 1.5)), load_run(run(2, 1.6))])
    assert table.index.tolist() == ["0", "1", "2", "mean", "std"]
    assert table.loc["mean", "mae"] == pytest.approx(1.5) and table.loc["std", "mae"] == pytest.approx(0.1)
    with pytest.raises(ReportError, match="differ in --seed only"):
        seeds_table([load_run(tmp_path / "seed0"), load_run(run(3, 1.4, {"epochs": 3}))])
