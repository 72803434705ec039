"""The report: tables from fixed, hand-written metrics.json fixtures; figures and atomic, repeatable writing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nanocrystal.config import ROOT
from nanocrystal.encode import encode
from nanocrystal.report import (README_BEGIN, README_END, ReportError, Run, load_run, lopo_table, readme_runs, report,
                                same_rows, shape_table, size_table, tsne_plot)
from nanocrystal.runs import load_fold_models, oof_embeddings
from nanocrystal.splits import paper_folds

FIXTURES = Path(__file__).parent / "fixtures" / "report"

SIZE_TABLE = """\
| model | split | MAE (nm) | MSE | RMSE (nm) | MAPE | R² | paper MAE | paper R² | selection | command | wall |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| Transformer | paper | 1.3800 | 4.6000 | 2.1400 | 0.1700 | 0.7500 | 1.3995 | 0.7198 | fixed schedule | `bash scripts/best_size.sh` | 18.0 min |
| Random forest | paper | 1.5500 | 5.1000 | 2.2500 | 0.1800 | 0.7310 | 1.6307 |  | 3-fold inner CV on training rows | `python train.py --model rf --task size` | 2.5 min |
| LightGBM | grouped | 2.5000 | 11.0000 | 3.3000 | 0.3000 | 0.4000 |  |  | not stated | `python train.py --model lgbm --split grouped` | 1.0 min |"""  # noqa: E501

SHAPE_TABLE = """\
| model | split | accuracy | weighted F1 | paper accuracy | selection | command | wall |
| --- | --- | --- | --- | --- | --- | --- | --- |
| Random forest (measured size given) | paper | 0.8500 | 0.8400 |  | 3-fold inner CV on training rows | `python train.py --model rf --task shape --size_as_input` | 1.5 min |"""  # noqa: E501

LOPO_TABLE = """\
| product | model | MAE (nm) | R² | paper MAE | selection | command | wall |
| --- | --- | --- | --- | --- | --- | --- | --- |
| PbSe | Transformer | 2.5000 | 0.1000 | 2.6522 | fixed schedule | `python train.py --object_name PbSe Ni` | 10.0 min |
| Ni | Transformer | 2.0000 | 0.3000 | 2.0056 | fixed schedule | `python train.py --object_name PbSe Ni` | 10.0 min |"""


@pytest.fixture(scope="module")
def runs():
    return [load_run(p) for p in sorted(FIXTURES.iterdir())]


def test_tables_reproduce_the_fixtures(runs):
    assert size_table(runs) == SIZE_TABLE
    assert shape_table(runs) == SHAPE_TABLE
    assert lopo_table(runs) == LOPO_TABLE


def test_paper_columns_only_where_comparable(runs):
    # the paper's shape accuracy used the measured size as an input: a recipe-only run gets no paper figure
    recipe_only = [r for r in runs if r.metrics["task"] == "shape"][0]
    recipe_only = type(recipe_only)(recipe_only.path, recipe_only.metrics, {"size_as_input": False})
    assert "| Random forest (recipe only) | paper | 0.8500 | 0.8400 |  |" in shape_table([recipe_only])


def test_report_writes_markdown_and_figures_repeatably(tmp_path, runs):
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("\n".join(f"shape{k}" for k in range(11)))
    paper = tmp_path / "paper.csv"
    pd.DataFrame({"true": [12.0, 5.0, 8.0], "pred": [11.0, 6.0, 8.5]}).to_csv(paper, index=False)
    out, assets = tmp_path / "docs" / "results.md", tmp_path / "assets"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n## Results\n{README_BEGIN}\nold\n{README_END}\nafter\n")
    dirs = [str(p) for p in sorted(FIXTURES.iterdir())]

    text = report(dirs, out, assets, shapes, paper, readme)
    assert out.read_text() == text and SIZE_TABLE in text and LOPO_TABLE in text
    assert "![size_parity.png](../assets/size_parity.png)" in text
    assert "beside the paper's published out-of-fold predictions" in text
    for name in ("size_parity.png", "shape_confusion.png", "lopo_products.png"):
        assert (assets / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme_text = readme.read_text()
    assert "\nold\n" not in readme_text and readme_text.endswith(f"{README_END}\nafter\n")
    assert readme_text.count("## Results") == 1 and text.startswith("## Results\n")  # the README keeps its own
    assert "![size_parity.png](assets/size_parity.png)" in readme_text
    first = {p.name: p.read_bytes() for p in assets.iterdir()}
    assert report(dirs, out, assets, shapes, paper) == text  # regenerates the same text and images
    assert {p.name: p.read_bytes() for p in assets.iterdir()} == first
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp file left behind


def variant(run: Run, name: str, config: dict | None = None, **metrics) -> Run:
    """A copy of a fixture run with other metrics (`mean` figures as keywords of the same name) and config."""
    changed = {**run.metrics, "mean": {**run.metrics["mean"], **{k: v for k, v in metrics.items() if k != "model"}}}
    changed["model"] = metrics.get("model", run.metrics["model"])
    return Run(run.path.parent / name, changed, run.config if config is None else config)


def test_readme_keeps_the_best_run_per_task_and_split_and_the_papers_models(runs):
    by_name = {r.path.name: r for r in runs}
    rf, shape_rf = by_name["size-rf-paper"], by_name["shape-rf-paper"]
    extra = [variant(rf, "size-lgbm-paper", model="lgbm", mae=1.45),  # neither the best nor a model the paper reports
             variant(rf, "size-rf-paper-worse", mae=1.60),  # the paper's model, but not its best run
             variant(shape_rf, "shape-rf-recipe", {"size_as_input": False}, accuracy=0.80),  # best of its mode
             variant(shape_rf, "shape-rf-recipe-worse", {"size_as_input": False}, accuracy=0.79),
             variant(shape_rf, "shape-transformer-sizein", {"size_as_input": True}, model="transformer", accuracy=0.84)]
    chosen = {r.path.name for r in readme_runs(runs + extra)}
    # the best of each task and split (and shape mode), and the best run of each model beside a paper figure
    assert chosen == {"size-transformer-paper", "size-rf-paper", "size-lgbm-grouped", "size-transformer-lopo",
                      "shape-rf-paper", "shape-rf-recipe", "shape-transformer-sizein"}


def test_readme_block_has_the_chosen_rows_and_results_md_every_row(tmp_path):
    folders = tmp_path / "runs"
    shutil.copytree(FIXTURES, folders)
    worse = folders / "size-lgbm-paper"
    shutil.copytree(folders / "size-rf-paper", worse)
    metrics = json.loads((worse / "metrics.json").read_text())
    # a run saved by absolute path inside the checkout is shown from the checkout's root
    metrics.update(model="lgbm", command=f"python train.py --model lgbm --task size --save_path {ROOT}/runs/lgbm")
    metrics["mean"]["mae"] = 1.45
    (worse / "metrics.json").write_text(json.dumps(metrics))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{README_BEGIN}\n{README_END}\n")
    text = report([str(p) for p in sorted(folders.iterdir())], tmp_path / "results.md", tmp_path / "assets",
                  tmp_path / "none", tmp_path / "none.csv", readme)
    row = "| LightGBM | paper | 1.4500 |"
    assert row in text and row not in readme.read_text()
    assert "`python train.py --model lgbm --task size --save_path runs/lgbm`" in text and str(ROOT) not in text
    assert SIZE_TABLE in readme.read_text() and LOPO_TABLE in readme.read_text()


def test_paper_predictions_are_matched_on_their_rows():
    ours = pd.DataFrame({"true": [5.0, 8.0, 12.0], "pred": [1.0, 2.0, 3.0]})
    assert same_rows(ours, pd.DataFrame({"true": [12.0, 5.0, 8.0], "pred": [0.0, 0.0, 0.0]}))
    assert not same_rows(ours, pd.DataFrame({"true": [12.0, 5.0, 9.0], "pred": [0.0, 0.0, 0.0]}))


def test_bad_run_folders_are_named(tmp_path):
    with pytest.raises(ReportError, match="metrics.json: no such file"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text('{"task": "size"}')
    with pytest.raises(ReportError, match="missing keys model, split, mean, per_fold"):
        load_run(tmp_path)


def test_readme_needs_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ReportError, match="results:begin"):
        report([str(FIXTURES / "size-rf-paper")], tmp_path / "r.md", tmp_path / "a", tmp_path / "none",
               tmp_path / "none.csv", readme)
    assert readme.read_text() == "# no markers\n"


def test_tsne_plot(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = np.vstack([rng.normal(0, 1, (20, 8)), rng.normal(5, 1, (20, 8))])
    tsne_plot(embeddings, np.repeat([0, 9], 20), [f"s{k}" for k in range(11)], tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="40 embeddings but 3 labels"):
        tsne_plot(embeddings, np.zeros(3), ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="and 2 groups"):
        tsne_plot(embeddings, np.zeros(40), ["a"], tmp_path / "x.png", groups=np.zeros(2))


def test_oof_embeddings_are_each_folds_held_out_rows(size_run, table, descriptors):
    values, shapes, folds = oof_embeddings(size_run, table, descriptors)
    valid = [paper_folds(table, 2, 0)[k].valid for k in (0, 1)]  # the tiny run's 2-fold split: 309 + 308 rows
    assert values.shape == (617, 16) and list(folds) == ["fold0"] * 309 + ["fold1"] * 308
    np.testing.assert_array_equal(shapes, table["Y3"].to_numpy()[np.concatenate(valid)])
    # fold1's rows went through fold1's own model (its first member), not fold0's
    fold1 = load_fold_models(size_run / "fold1.pt", descriptors)
    with torch.no_grad():
        expected = fold1.members[0].cls_embedding(encode(table.iloc[valid[1]], fold1.encoder)).numpy()
    np.testing.assert_allclose(values[309:], expected, rtol=1e-5, atol=1e-6)
    fold0 = load_fold_models(size_run / "fold0.pt", descriptors)
    with torch.no_grad():
        other = fold0.members[0].cls_embedding(encode(table.iloc[valid[1]], fold0.encoder)).numpy()
    assert not np.allclose(values[309:], other, atol=1e-3)


def test_report_draws_the_tsne_of_a_transformer_run(size_run, shape_run, data_dir, feats_path, tmp_path):
    out, assets = tmp_path / "results.md", tmp_path / "assets"
    shapes = data_dir / "shapes_list.txt"
    text = report([str(size_run), str(shape_run)], out, assets, shapes, tmp_path / "none.csv",
                  data_dir=data_dir, feats_path=feats_path)
    assert (assets / "tsne_cls.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![tsne_cls.png](assets/tsne_cls.png)" in text
    assert f"(`{shape_run.name}`, paper split)" in text  # the shape run is preferred to the size run
    # without the data, no t-SNE (and no error)
    again = report([str(size_run)], tmp_path / "r2.md", tmp_path / "assets2", shapes, tmp_path / "none.csv")
    assert "tsne_cls.png" not in again and not (tmp_path / "assets2" / "tsne_cls.png").exists()


def test_cli_report_leaves_out_unfinished_runs(tmp_path, capsys):
    from nanocrystal.cli import main

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    out = tmp_path / "results.md"
    common = ["--out", str(out), "--assets", str(tmp_path / "assets"), "--paper-predictions", str(tmp_path / "x.csv")]
    assert main(["report", str(FIXTURES / "size-rf-paper"), str(unfinished), *common]) == 0
    assert "unfinished: no metrics.json" in capsys.readouterr().err
    assert "| Random forest | paper | 1.5500 |" in out.read_text()
    assert main(["report", str(unfinished), *common]) == 2
    assert "none of the run folders holds a finished result" in capsys.readouterr().err


def test_labels_name_the_tree_blend_of_neural_runs_only(runs):
    size_runs = {r.metrics["model"]: r for r in runs if r.metrics["task"] == "size"}
    blended = type(size_runs["transformer"])(size_runs["transformer"].path, size_runs["transformer"].metrics,
                                             {"tree_blend": 0.5, "blend_models": ["lgbm", "et"],
                                              "augmented": "data/augmented-k20"})
    assert blended.label == "Transformer + LightGBM + Extra trees (0.5) (augmented: augmented-k20)"
    corrected = type(blended)(blended.path, blended.metrics, {"tree_blend": 0.8, "blend_models": ["lgbm", "et"],
                                                              "series_correction": True})
    assert corrected.label == "Transformer + LightGBM + Extra trees (0.8) (series correction)"
    seeded = type(blended)(blended.path, blended.metrics, {"tree_blend": 0.8, "blend_models": ["lgbm", "et"],
                                                           "lgbm_seeds": 3, "lgbm_huber_delta": 0.05,
                                                           "series_correction": True})
    assert seeded.label == "Transformer + LightGBM (3 seeds, Huber 0.05) + Extra trees (0.8) (series correction)"
    older = type(blended)(blended.path, blended.metrics, {"lgbm_blend": 0.5})  # config.json before tree_blend
    assert older.label == "Transformer + LightGBM (0.5)"
    # the cpu preset sets tree_blend for every model; a tree run is never blended
    forest = type(size_runs["rf"])(size_runs["rf"].path, size_runs["rf"].metrics,
                                    {"tree_blend": 0.5, "series_correction": True})
    assert forest.label == "Random forest"
    lopo = [r for r in runs if r.metrics.get("object_name")][0]
    assert type(lopo)(lopo.path, lopo.metrics, {"use_product": True}).label == "Transformer (product token)"
    assert type(lopo)(lopo.path, lopo.metrics, {"use_product": False}).label == "Transformer"


def test_tuning_partial_few_shot_and_reseeded_runs_are_left_out_of_the_report(tmp_path, runs, capsys):
    import json
    import shutil

    full = FIXTURES / "size-rf-paper"
    tuning, partial, shots, seed3 = tmp_path / "tuning", tmp_path / "partial", tmp_path / "shots", tmp_path / "seed3"
    for folder in (tuning, partial, shots, seed3):
        shutil.copytree(full, folder)
    metrics = json.loads((full / "metrics.json").read_text())
    (tuning / "metrics.json").write_text(json.dumps({**metrics, "scored_on": "inner"}))
    (partial / "config.json").write_text(json.dumps({"n_folds": 5}))  # 2 folds of 5 scored (--folds 0 1)
    # a few-shot run scores lower than its zero-shot run on other rows: it must not stand as the best result
    (shots / "metrics.json").write_text(json.dumps({**metrics, "mean": {**metrics["mean"], "mae": 0.1}}))
    (shots / "config.json").write_text(json.dumps({"n_folds": 2, "shots": 5}))
    # nor a run on another split seed: its validation rows are not the paper's
    (seed3 / "metrics.json").write_text(json.dumps({**metrics, "mean": {**metrics["mean"], "mae": 0.1}}))
    (seed3 / "config.json").write_text(json.dumps({"n_folds": 2, "seed": 3}))
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("\n".join(f"shape{k}" for k in range(11)))
    dirs = [str(full), str(tuning), str(partial), str(shots), str(seed3)]
    text = report(dirs, tmp_path / "results.md", tmp_path / "assets", shapes, tmp_path / "no-paper.csv")
    assert text.count("| Random forest | paper |") == 1 and "0.1000" not in text
    err = capsys.readouterr().err
    assert f"{tuning}: scored on inner validation rows (a tuning run), left out" in err
    assert f"{partial}: 2 of 5 folds scored, left out" in err
    assert f"{shots}: 5 recipes of each held-out product in training (a few-shot run), left out" in err
    assert f"{seed3}: split seed 3, not the paper's 0 (a run of `--seeds`), left out" in err
    with pytest.raises(ReportError, match="finished result"):
        report(dirs[1:], tmp_path / "results.md", tmp_path / "assets", shapes, tmp_path / "no-paper.csv")
