"""The web app for chemists: predict, explore and design recipes in the browser (Streamlit).

Served by `python -m nanocrystal app` (or `bash scripts/app.sh`), which runs
`streamlit run nanocrystal/app.py -- --size-run RUN [--shape-run RUN]`. Four pages: Predict (a recipe form or a file
of recipes), Explore (the response to one varied parameter), Design (a search for a target size) and Data (the
dataset by product). Every number comes from predict.py / design.py; the runs load once per process
(st.cache_resource) and their folders are only read (load_predictor with write_cache=False).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
import torch

from nanocrystal.config import ROOT
from nanocrystal.descriptors import DescriptorError
from nanocrystal.design import DEFAULT_TOLERANCE_NM, DesignError, design, parse_vary, response, series_measurements
from nanocrystal.predict import (DEFAULT_CONFIDENCE, FIELD_LABELS, FORM_SOURCE, OUTSIDE_COLUMN, WARNING_COLUMN,
                                 PredictError, Predictor,
                                 Recipes, TrainingRecipes, known_substances, load_predictor, measured,
                                 nearest_training, predict_recipes, product_overview, read_recipes, reagents_text,
                                 recipe_table, shape_column, training_recipes)
from nanocrystal.recipes import (AMOUNT_COLUMNS, CONDITION_COLUMNS, EMPTY_NAME, NAME_COLUMNS, PRODUCT_NAME,
                                 TEMPERATURE_COLUMNS, RecipeError)
from nanocrystal.substances import SUBSTANCE_COLUMNS, SubstanceError, read_substances

EXAMPLE = ROOT / "examples" / "template_pbse.csv"
UNITS = {"Temperature1": "°C", "Temperature2": "°C", "Speed": "°C/min", "Time": "min"}
RESPONSE_POINTS = 30
NEAREST = 5


# ---- runs, loaded once per process -----------------------------------------------------------------------------------

@dataclass
class Models:
    predictor: Predictor
    training: TrainingRecipes
    products: list[str]
    substances: list[str]
    starts: pd.DataFrame  # recipes a form can start from: the example template, then the dataset's recipes
    start_labels: list[str]  # plain strings: a format_func over thousands of options costs every page a rerun
    load_s: float

    @property
    def start_position(self) -> dict[str, int]:
        return {label: k for k, label in enumerate(self.start_labels)}


@st.cache_resource(show_spinner="Loading the models (once per server process) ...")
def load_models(size_run: str, shape_run: str | None) -> Models:
    start = time.perf_counter()
    torch.set_num_threads(1)  # one recipe at a time: one thread is fastest on a shared CPU
    predictor = load_predictor(size_run, shape_run, write_cache=False)
    training = training_recipes(predictor.size)
    example = read_recipes(EXAMPLE, predictor.shapes).table
    recipes = training.table[~training.table["failed"]]
    starts = pd.concat([example, recipes], ignore_index=True)
    labels = [f"example: {EXAMPLE.name} ({reagents_text(example)[0]})"] + [
        f"dataset ID {i}: {p}, {r}; {t:g} °C, {m:g} min" for i, p, r, t, m in
        zip(recipes["ID"], recipes[PRODUCT_NAME], reagents_text(recipes), recipes["Temperature2"], recipes["Time"])]
    return Models(predictor, training, training.products(), known_substances(predictor), starts, labels,
                  time.perf_counter() - start)


# ---- words and numbers -------------------------------------------------------------------------------------------------

def parameter_label(name: str) -> str:
    """A condition column or a substance name, as a form shows it."""
    if name in UNITS:
        return f"{FIELD_LABELS[name].capitalize()} ({UNITS[name]})"
    return f"{name} amount (mmol)"


def size_interval(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per row size_lo, size_hi and the size in words, and the band's name: the calibrated interval (predict's
    DEFAULT_CONFIDENCE) where the size run has a calibration, else size_nm ± size_std, the spread of the run's models
    (a run trained with --calibration_folds 0, or before calibration existed: size_lo is NaN). The one place that
    knows both."""
    if {"size_lo", "size_hi"} <= set(frame.columns) and frame["size_lo"].notna().all():
        band = f"{DEFAULT_CONFIDENCE * 100:.0f} % interval"
        low, high = frame["size_lo"], frame["size_hi"]
        words = [f"{s:.1f} nm ({band} {lo:.1f}–{hi:.1f} nm)" for s, lo, hi in zip(frame["size_nm"], low, high)]
    else:
        band = "model spread"
        low, high = frame["size_nm"] - frame["size_std"], frame["size_nm"] + frame["size_std"]
        words = [f"{s:.1f} ± {d:.1f} nm (model spread)" for s, d in zip(frame["size_nm"], frame["size_std"])]
    return pd.DataFrame({"size_lo": low, "size_hi": high, "size": words}, index=frame.index), band


def applicability_words(row: pd.Series) -> str:
    """predict's applicability columns of one recipe in a sentence."""
    if row["in_domain"]:
        return (f"Within the model's experience: the nearest training recipes lie at {row['domain_distance']:.2f} of "
                "the model's threshold distance (1 = threshold) and every value is inside the training range.")
    reasons = []
    if row["domain_distance"] > 1:
        reasons.append(f"it lies farther from the training recipes than the model's threshold (distance "
                       f"{row['domain_distance']:.2f}, threshold 1)")
    if row[OUTSIDE_COLUMN]:
        beyond = ", ".join(FIELD_LABELS.get(part, part) for part in row[OUTSIDE_COLUMN].split(", "))
        reasons.append(f"beyond every training recipe: {beyond}")
    if row.get(WARNING_COLUMN):
        reasons.append(f"{row[WARNING_COLUMN]}")
    return "Outside the model's experience: " + "; ".join(reasons) + ". Read the numbers as an extrapolation."


def unknown_messages(predictor: Predictor, table: pd.DataFrame, rows: list[str]) -> list[str]:
    """One line per substance (or product) without a descriptor; rows: how to name each recipe."""
    return [f"{rows[u.position]}{FIELD_LABELS[u.column]}: no descriptor for {u.name!r}, so the models cannot read "
            f"it; pick a name from the list (type to search)" for u in predictor.unknown(table).itertuples()]


def new_substances(key: str) -> pd.DataFrame | None:
    """Substances the models lack, given by formula or SMILES in a small table (read as predict's --substances
    file; problems shown inline). None when the table is empty or has a problem."""
    with st.expander("New substances: a formula or SMILES for a name the models lack (vectors imputed, interval "
                     "widened)"):
        edited = st.data_editor(pd.DataFrame({c: pd.Series(dtype=str) for c in SUBSTANCE_COLUMNS}), key=key,
                                num_rows="dynamic", hide_index=True)
    edited = edited.fillna("").astype(str)
    edited = edited[(edited != "").any(axis=1)]
    if edited.empty:
        return None
    with tempfile.TemporaryDirectory() as folder:  # read_substances reads a path; messages name the table
        path = Path(folder) / "new substances"
        edited.to_csv(path, index=False)
        try:
            return read_substances(path)
        except SubstanceError as error:
            show_problems([p.replace(str(path), "new substances") for p in error.problems])
            return None


def show_problems(problems: list[str]) -> None:
    st.error("\n".join(f"- {p}" for p in problems))


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


# ---- the recipe form (every page that needs a recipe has its own) ------------------------------------------------------

def recipe_form(prefix: str, models: Models, start: int = 0) -> pd.DataFrame | None:
    """Product, conditions and substances, starting from a recipe the user picks. The validated one-recipe table, or
    None after an inline message."""
    top = st.columns([2, 1])
    label = top[0].selectbox("Start from", models.start_labels, index=start, key=f"{prefix}-start",
                             help="type to search the dataset's recipes")
    chosen = models.start_position[label]
    base = models.starts.iloc[chosen]
    key = f"{prefix}-{chosen}"  # another starting recipe: fresh fields holding its values
    products = models.products if base[PRODUCT_NAME] in models.products else [*models.products, base[PRODUCT_NAME]]
    product = top[1].selectbox("Product", products, index=products.index(base[PRODUCT_NAME]),
                               accept_new_options=True, key=f"{key}-product")
    columns = st.columns(4)
    conditions = {c: columns[k].number_input(parameter_label(c), value=float(base[c]),
                                             min_value=-273.15 if c in TEMPERATURE_COLUMNS else 0.0,
                                             step=1.0 if c != "Time" else 0.5, format="%g", key=f"{key}-{c}")
                  for k, c in enumerate(("Temperature1", "Temperature2", "Time", "Speed"))}
    used = [(n, float(a)) for n, a in zip(base[list(NAME_COLUMNS)], base[list(AMOUNT_COLUMNS)]) if n != EMPTY_NAME]
    count = st.number_input("Number of substances", min_value=1, max_value=len(NAME_COLUMNS), value=max(len(used), 1),
                            key=f"{key}-count")
    substances = []
    for k in range(int(count)):
        if k % 2 == 0:  # two substances to a row
            cells = st.columns([3, 1, 3, 1])
        name, amount = used[k] if k < len(used) else (None, 0.0)
        options = models.substances if name is None or name in models.substances else [*models.substances, name]
        chosen_name = cells[2 * (k % 2)].selectbox(
            f"Substance {k + 1}", options, index=None if name is None else options.index(name),
            accept_new_options=True, placeholder="type to search", key=f"{key}-substance-{k}")
        chosen_amount = cells[2 * (k % 2) + 1].number_input("mmol", value=amount, min_value=0.0, step=0.1, format="%g",
                                                            key=f"{key}-amount-{k}")
        substances.append((chosen_name or "", chosen_amount))
    try:
        return recipe_table(product or "", substances, conditions["Temperature1"], conditions["Temperature2"],
                            conditions["Time"], conditions["Speed"], len(models.predictor.shapes))
    except RecipeError as error:
        show_problems(error.problems)
        return None


def known_or_message(models: Models, table: pd.DataFrame, allow_unknown: bool = False) -> bool:
    """False (after an inline message) when the recipe names a substance without a descriptor."""
    messages = unknown_messages(models.predictor, table, [""] * len(table))
    if messages and not allow_unknown:
        show_problems(messages)
        return False
    return True


def range_inputs(prefix: str, name: str, table: pd.DataFrame) -> str:
    """Low and high of one parameter, starting around its value in the recipe; design's NAME=LOW:HIGH."""
    column = name if name in UNITS else AMOUNT_COLUMNS[list(table.iloc[0][list(NAME_COLUMNS)]).index(name)]
    value = float(table[column].iloc[0])
    if column in TEMPERATURE_COLUMNS:
        low, high = value - 50, value + 50
    elif column == "Speed":
        low, high = 0.0, max(2 * value, 10.0)
    else:  # time and amounts span decades
        low, high = (value / 4, value * 4) if value > 0 else (0.1, 10.0)
    left, right = st.columns(2)
    key = f"{prefix}-{name}-{value:g}"  # a new value in the form: a new default range around it
    low = left.number_input(f"{parameter_label(name)} from", value=low, format="%g", key=f"{key}-low")
    high = right.number_input("to", value=high, format="%g", key=f"{key}-high")
    return f"{name}={low!r}:{high!r}"


def parse_ranges(specs: list[str], table: pd.DataFrame):
    """design.parse_vary, its messages in the form's words; None after an inline message."""
    try:
        return parse_vary(specs, table.iloc[0])
    except DesignError as error:
        show_problems([re.sub(r"^--vary '([^=']*)=[^']*'", lambda m: f"range of {parameter_label(m.group(1))}", p)
                       for p in error.problems])
        return None


def parameters(table: pd.DataFrame) -> list[str]:
    """What Explore and Design can vary: the conditions and the recipe's substances."""
    return [*CONDITION_COLUMNS, *[n for n in table.iloc[0][list(NAME_COLUMNS)] if n != EMPTY_NAME]]


# ---- pages -------------------------------------------------------------------------------------------------------------

def shape_chart(prediction: pd.Series, shapes: list[str]) -> alt.Chart:
    probabilities = pd.DataFrame({"shape": shapes, "probability": [prediction[shape_column(s)] for s in shapes]})
    return alt.Chart(probabilities).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("shape:N", sort="-x"),
        tooltip=["shape", alt.Tooltip("probability:Q", format=".3f")])


def show_prediction(models: Models, prediction: pd.DataFrame) -> None:
    row = prediction.iloc[0]
    words, _ = size_interval(prediction)
    st.caption("Predicted size")
    st.subheader(words["size"].iloc[0])
    if models.predictor.shape is not None:
        st.caption("Shape")
        st.markdown(f"Most likely **{row['shape']}** (probability {row[shape_column(row['shape'])]:.2f}); "
                    f"chance that the synthesis fails: **{row['p_failed']:.0%}**.")
        if row.get("shape_set"):  # empty for a shape run without calibration
            st.markdown(f"Prediction set ({DEFAULT_CONFIDENCE * 100:.0f} %): {row['shape_set'].replace('|', ', ')}")
        st.altair_chart(shape_chart(row, models.predictor.shapes), width="stretch")
    (st.success if row["in_domain"] else st.warning)(applicability_words(row))


def show_nearest(models: Models, table: pd.DataFrame) -> None:
    st.caption(f"The {NEAREST} nearest training recipes, with what was measured (in the representation of each fold's "
               "first size model; distance in units of the applicability threshold)")
    nearest = nearest_training(models.predictor.size, models.training, table, NEAREST)
    st.dataframe(nearest, hide_index=True, column_order=["distance", "ID", "product", "measured_size_nm",
                                                         "measured_shape", "particles_counted", *CONDITION_COLUMNS,
                                                         "reagents"],
                 column_config={"distance": st.column_config.NumberColumn(format="%.2f"),
                                "measured_size_nm": "measured size (nm)", "measured_shape": "measured shape",
                                "particles_counted": "particles counted", "reagents": "reagents (mmol)",
                                **{c: parameter_label(c) for c in CONDITION_COLUMNS}})


def predict_page(models: Models) -> None:
    st.header("Predict: what will this recipe give?")
    one, batch = st.tabs(["One recipe", "A file of recipes"])
    with one:
        left, right = st.columns([3, 2])
        with left:
            table = recipe_form("predict", models)
            allow = st.checkbox("Predict unknown substances as zeros (the result is then out of domain)",
                                key="predict-allow-unknown")
            extra = new_substances("predict-new-substances")
        if table is not None:  # the form's substances the models lack that substances.csv or the table above give
            models = replace(models, predictor=models.predictor.with_substances(table, extra))
        if table is not None and known_or_message(models, table, allow):
            prediction = predict_recipes(models.predictor, Recipes(table, table.index.to_numpy() + 1, FORM_SOURCE),
                                         allow_unknown=True)
            with right:
                show_prediction(models, prediction)
            show_nearest(models, table)
    with batch:
        predict_file(models)


def predict_file(models: Models) -> None:
    st.markdown("A CSV in the model layout (`python -m nanocrystal predict` reads the same) or the human-readable "
                "xlsx layout (`python -m nanocrystal convert`); labels are not needed.")
    upload = st.file_uploader("Recipe file", type=["csv", "xlsx"], key="predict-file")
    allow = st.checkbox("Predict unknown substances as zeros", key="predict-file-allow-unknown")
    extra = new_substances("predict-file-new-substances")
    if upload is None:
        return
    with tempfile.TemporaryDirectory() as folder:  # read_recipes reads a path; messages name the upload
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        try:
            recipes = read_recipes(path, models.predictor.shapes)
        except RecipeError as error:
            show_problems([p.replace(str(path), upload.name) for p in error.problems])
            return
    rows = [f"row {line}, " for line in recipes.lines]
    models = replace(models, predictor=models.predictor.with_substances(recipes.table, extra))
    messages = unknown_messages(models.predictor, recipes.table, rows)
    if messages and not allow:
        show_problems(messages)
        return
    prediction = predict_recipes(models.predictor, recipes, allow_unknown=True)
    words, _ = size_interval(prediction)
    shapes = ["shape", "shape_set", "p_failed"] if "shape" in prediction else []
    shown = ["ID", "product", "size", *shapes, "in_domain", OUTSIDE_COLUMN, WARNING_COLUMN]
    st.dataframe(prediction.assign(size=words["size"])[shown], hide_index=True)
    st.download_button("Download the predictions (CSV, every column)", csv_bytes(prediction),
                       file_name=f"{Path(upload.name).stem}-predictions.csv", mime="text/csv", on_click="ignore")


def response_charts(curve: pd.DataFrame, series: pd.DataFrame, varied, shapes: list[str] | None) -> list[alt.Chart]:
    """Size with its band and the series' measured sizes; shape and failure probabilities (with a shape run)."""
    words, band = size_interval(curve)
    column = varied.column
    x = alt.X(f"{column}:Q", title=parameter_label(varied.name),
              scale=alt.Scale(type="log" if varied.log else "linear", domain=[varied.low, varied.high], nice=False))
    data = curve.assign(size_lo=words["size_lo"], size_hi=words["size_hi"])
    size = (alt.Chart(data).mark_area(opacity=0.25).encode(x=x, y=alt.Y("size_lo:Q", title="size (nm)"), y2="size_hi")
            + alt.Chart(data).mark_line().encode(x=x, y="size_nm:Q"))
    if len(series):
        size += alt.Chart(series).mark_circle(size=60, color="black", clip=True).encode(
            x=x, y="measured_size_nm:Q", tooltip=["ID", "measured_size_nm", "measured_shape"])
    charts = [size.properties(title=f"Size: predicted (line), {band} (band), measured (points)")]
    if shapes is not None:
        long = curve.melt(id_vars=[column], value_vars=[*map(shape_column, shapes), "p_failed"], var_name="outcome",
                          value_name="probability")
        long["outcome"] = long["outcome"].replace({shape_column(s): s for s in shapes} | {"p_failed": "failed"})
        charts.append(alt.Chart(long).mark_line().encode(x=x, y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
                                                         color="outcome:N", tooltip=["outcome", column, "probability"])
                      .properties(title="Shape probabilities and failure"))
    return charts


def explore_page(models: Models) -> None:
    st.header("Explore: how size and shape respond to one parameter")
    left, right = st.columns([1, 1])
    with left:
        table = recipe_form("explore", models, start=1)
        if table is None or not known_or_message(models, table):
            return
        names = parameters(table)
        name = st.selectbox("Vary", names, index=names.index("Time"), format_func=parameter_label,
                            key="explore-parameter")
        ranges = parse_ranges([range_inputs("explore", name, table)], table)
    if ranges is None:
        return
    curve = response(models.predictor, table, ranges[0], RESPONSE_POINTS)
    series = series_measurements(models.training, table, ranges[0])
    with right:
        shapes = models.predictor.shapes if models.predictor.shape is not None else None
        for chart in response_charts(curve, series, ranges[0], shapes):
            st.altair_chart(chart, width="stretch")
        st.caption(f"{len(series)} measured training recipe(s) of the same series: the same product, substances, "
                   "amounts and other conditions, differing only in the varied value.")


def design_page(models: Models) -> None:
    st.header("Design: conditions and amounts for a target size")
    left, right = st.columns([3, 2])
    with left:
        table = recipe_form("design", models)
        if table is None or not known_or_message(models, table):
            return
    with right:
        columns = st.columns(2)
        target = columns[0].number_input("Target size (nm)", min_value=0.1, value=8.0, step=0.5, format="%g",
                                         key="design-target")
        tolerance = columns[1].number_input("Tolerance (± nm)", min_value=0.01, value=DEFAULT_TOLERANCE_NM, step=0.1,
                                            format="%g", key="design-tolerance",
                                            help="candidates are ranked by the probability of a size within it")
        target_shape = None
        if models.predictor.shape is not None:
            target_shape = st.selectbox("Target shape", [None, *models.predictor.shapes], key="design-target-shape",
                                        format_func=lambda s: "any" if s is None else s)
        names = parameters(table)
        varied = st.multiselect("Parameters to vary", names, default=["Temperature2", "Time"],
                                format_func=parameter_label, key="design-varied")
        specs = [range_inputs("design", name, table) for name in varied]
        columns = st.columns(3)
        top = columns[0].number_input("Candidates", min_value=1, max_value=20, value=5, key="design-top")
        trials = columns[1].number_input("Trials", min_value=32, max_value=4096, value=256, step=32,
                                         key="design-trials")
        seed = columns[2].number_input("Seed", min_value=0, value=0, key="design-seed")
        calibrated = models.predictor.size_calibration is not None
        if not calibrated:
            st.warning("This size run has no calibration (trained with --calibration_folds 0, or before calibration "
                       "existed): Design ranks candidates by calibrated probabilities. Train the size run again "
                       "(bash scripts/best_size.sh) to search.")
        search = st.button("Search", type="primary", key="design-search", disabled=not calibrated)
    if not search:
        if calibrated:
            st.info("Set the target and the ranges, then press Search.")
        return
    ranges = parse_ranges(specs, table)
    if ranges is None:
        return
    bar = st.progress(0.0, text="searching ...")

    def progress(done: int, total: int, best: float) -> None:
        bar.progress(done / total, text=f"{done} of {total} candidates evaluated; best loss {best:.2f}")
    try:
        result = design(models.predictor, table, target, ranges, target_shape, int(top), int(trials), int(seed),
                        on_batch=progress, tolerance=tolerance)
    except DesignError as error:
        show_problems(error.problems)
        return
    for warning in result.warnings:
        st.warning(warning)
    show_candidates(result.table, ranges, target_shape, tolerance)


def show_candidates(candidates: pd.DataFrame, ranges, target_shape: str | None, tolerance: float) -> None:
    words, _ = size_interval(candidates)
    view = candidates.rename(columns={r.column: parameter_label(r.name) for r in ranges}).assign(size=words["size"])
    shown = ["ID", *[parameter_label(r.name) for r in ranges], "size", "p_within",
             *([shape_column(target_shape), "p_failed"] if target_shape else []), "in_domain", "loss"]
    st.dataframe(view[shown], hide_index=True, column_config={
        "in_domain": "in domain", "p_within": st.column_config.NumberColumn(
            f"P(size within ±{tolerance:g} nm)", format="%.2f")})
    st.download_button("Download the candidates (CSV; predict reads it back as recipes)", csv_bytes(candidates),
                       file_name="design.csv", mime="text/csv", on_click="ignore")


def data_page(models: Models) -> None:
    st.header("Data: the dataset by product")
    overview = product_overview(models.training)
    labels = measured(models.training.table, models.training.shapes)
    failed = labels["measured_shape"] == "failed"
    st.caption(f"{int(overview['recipes'].sum()):,} recipes of {len(overview):,} products and "
               f"{int(failed.sum()):,} failed syntheses ({int(overview['failed_syntheses'].sum()):,} of them name a "
               "product), from the fetched upstream dataset.")
    st.dataframe(overview, hide_index=True, column_config={
        "failed_syntheses": "failed syntheses", "with_size": "with a measured size",
        "median_size_nm": st.column_config.NumberColumn("median size (nm)", format="%.1f")})
    chosen = st.multiselect("Products to compare", overview["product"], default=list(overview["product"].head(6)),
                            key="data-products")
    if not chosen:
        return
    left, right = st.columns(2)
    sizes = labels[~failed & labels["product"].isin(chosen)].dropna(subset=["measured_size_nm"])
    left.altair_chart(alt.Chart(sizes).mark_boxplot().encode(
        x=alt.X("product:N", sort=chosen), y=alt.Y("measured_size_nm:Q", title="measured size (nm)", scale=alt.Scale(
            type="log"))).properties(title="Size distribution (recipes with a measured size)"), width="stretch")
    mix = overview[overview["product"].isin(chosen)].melt(id_vars="product", value_vars=models.training.shapes,
                                                          var_name="shape", value_name="count")
    right.altair_chart(alt.Chart(mix).mark_bar().encode(
        x=alt.X("product:N", sort=chosen), y=alt.Y("count:Q", stack="normalize", title="share of recipes"),
        color="shape:N", tooltip=["product", "shape", "count"]).properties(title="Shape mix"), width="stretch")


PAGES = {"Predict": predict_page, "Explore": explore_page, "Design": design_page, "Data": data_page}


# ---- entry point (streamlit runs this file as a script) ---------------------------------------------------------------

def sidebar(models: Models) -> None:
    predictor = models.predictor
    for title, run in (("Size run", predictor.size), ("Shape run", predictor.shape)):
        if run is not None:
            count = sum(len(fold.members) for fold in run.folds)
            st.sidebar.caption(f"{title}: `{run.path}` ({len(run.folds)} folds, {count} models)")
    st.sidebar.caption(f"Models loaded in {models.load_s:.1f} s (once per server process).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nanocrystal app")
    parser.add_argument("--size-run", required=True)
    parser.add_argument("--shape-run", default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    st.set_page_config(page_title="nanocrystal", layout="wide")
    try:
        models = load_models(args.size_run, args.shape_run)
    except (PredictError, RecipeError, DescriptorError) as error:
        st.error(f"The runs could not be loaded: {error}")
        st.stop()
    sidebar(models)
    pages = [st.Page(partial(page, models), title=title, url_path=title.lower(), default=k == 0)
             for k, (title, page) in enumerate(PAGES.items())]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()
