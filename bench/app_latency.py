"""Time of the app's Predict page on real runs, in Streamlit's AppTest (the server side: a prediction, its nearest
training recipes, the page's elements): the first run, which loads the runs (once per process), then reruns after a
changed reaction temperature, each a new prediction; then the parts of such a rerun called alone.

    python bench/app_latency.py --size-run runs/ref-size [--shape-run RUN] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanocrystal.app import Models, load_models  # noqa: E402
from nanocrystal.predict import nearest_training, recipe_table  # noqa: E402
from nanocrystal.recipes import AMOUNT_COLUMNS, NAME_COLUMNS  # noqa: E402


def predict_page(size_run: str, shape_run: str | None) -> None:
    from nanocrystal.app import PAGES, load_models

    PAGES["Predict"](load_models(size_run, shape_run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-run", required=True)
    parser.add_argument("--shape-run", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    start = time.perf_counter()
    at = AppTest.from_function(predict_page, args=(args.size_run, args.shape_run), default_timeout=600).run()
    print(f"first run (loads the runs): {time.perf_counter() - start:.1f} s")
    seconds = []
    for k in range(args.repeats):
        at.number_input(key="predict-0-Temperature2").set_value(150.0 + 5 * (k + 1))
        start = time.perf_counter()
        at.run()
        seconds.append(time.perf_counter() - start)
        if at.exception or not at.subheader:
            sys.exit(f"error: the page shows no prediction: {[e.value for e in at.exception]}")
    print(f"rerun with a new prediction ({args.repeats}x): median {statistics.median(seconds):.2f} s, "
          f"max {max(seconds):.2f} s; last: {at.subheader[0].value}")
    parts(load_models(args.size_run, args.shape_run), args.repeats)


def parts(models: Models, repeats: int) -> None:
    """Median seconds of the form's recipe (the example template), its prediction and its nearest training recipes,
    each called alone."""
    example = models.starts.iloc[0]
    substances = [(n, a) for n, a in zip(example[list(NAME_COLUMNS)], example[list(AMOUNT_COLUMNS)]) if a > 0]
    timings: dict[str, list[float]] = {"recipe_table": [], "Predictor.predict": [], "nearest_training": []}
    for k in range(repeats):
        start = time.perf_counter()
        table = recipe_table(example["T2"], substances, example["Temperature1"], 150 + 5 * (k + 1), example["Time"],
                             example["Speed"], len(models.predictor.shapes))
        formed = time.perf_counter()
        models.predictor.predict(table)
        predicted = time.perf_counter()
        nearest_training(models.predictor.size, models.training, table)
        found = time.perf_counter()
        for name, seconds in zip(timings, (formed - start, predicted - formed, found - predicted)):
            timings[name].append(seconds)
    print("alone (median): " + ", ".join(f"{name} {statistics.median(t):.2f} s" for name, t in timings.items()))


if __name__ == "__main__":
    main()
