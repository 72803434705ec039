"""Time of the app's Predict page on real runs, in Streamlit's AppTest (the server side: a prediction, its nearest
training recipes, the page's elements): the first run, which loads the runs (once per process), then reruns after a
changed reaction temperature, each a new prediction.

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


if __name__ == "__main__":
    main()
