"""Progress a person can read: a bar on a terminal, plain log lines elsewhere (never `\\r` in a redirected log)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import nanocrystal.progress
from nanocrystal.baselines import inner_splits
from nanocrystal.config import resolve
from nanocrystal.progress import Progress
from nanocrystal.runs import fold_progress


@pytest.fixture
def terminal(monkeypatch):
    """As if stdout and stderr were a terminal: bars are drawn (on the captured stderr)."""
    monkeypatch.setattr(nanocrystal.progress, "interactive", lambda: True)


def test_without_a_terminal_a_line_every_n_steps_and_at_the_end():
    lines = []
    progress = Progress(10, "fold0 transformer", lines.append, every=4, unit="epochs")
    for epoch in range(1, 11):
        progress.update(epoch=f"{epoch}/10", loss=1.0 / epoch)
    assert lines == ["fold0 transformer: 4/10 epochs, epoch 4/10, loss 0.25",
                     "fold0 transformer: 8/10 epochs, epoch 8/10, loss 0.125",
                     "fold0 transformer: 10/10 epochs, epoch 10/10, loss 0.1"]


def test_one_bar_per_fold_with_member_epoch_and_loss(terminal, capsys):
    cfg = resolve("tiny", {"n_members": 2, "epochs": 3, "pretrain_epochs": 1})
    logged = []
    report = fold_progress(cfg, "fold2", SimpleNamespace(info=logged.append))  # the run's logger
    for member in range(2):
        report(member)("pretrain", 1, 2.0)
        for epoch in (1, 2, 3):
            report(member)("train", epoch, 1.0 / epoch)
    err = capsys.readouterr().err
    assert err.count("fold2 transformer") >= 1 and "8/8" in err  # one bar over both members' 4 epochs
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("fold2 transformer: 100%") and "member 2/2, epoch 3/3, loss 0.3333" in final
    assert logged == []  # the bar replaces the log lines


def test_tree_fitting_shows_its_inner_folds(terminal, table, capsys):
    cfg = resolve("tiny", {"model": "rf"})
    train = table.head(1500)
    splits = list(inner_splits(cfg, train, np.asarray(train["Num"] < 300)))
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("rf inner CV: 100%") and f"{len(splits)}/{len(splits)}" in final
