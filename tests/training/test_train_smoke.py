"""The shipped smoke configs train, write checkpoints and logs, and `train-seg eval` reads them."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from train_helpers import quiet

from seg_training.cli import train_cls_main, train_seg_main
from seg_training.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"


def test_smoke_seg_trains_and_eval_reads_checkpoint(tmp_path, capsys):
    assert train_seg_main(["--config", "smoke_seg", "--train.epochs", "2", *quiet(tmp_path)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "smoke_seg"
    assert {"last.pt", "best.pt", "log.csv", "config.yaml", "summary.json"} <= {p.name for p in run.iterdir()}
    assert "run finished" in out and "mIoU" in out

    # weights_only loading (load_checkpoint) of a plain-data checkpoint
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["task"] == "seg" and ckpt["classes"] == ["background", "person"]
    assert ckpt["step"] == 6  # 6 images, batch 2, 2 epochs
    assert len(ckpt["history"]) == 2
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert 0.0 <= float(rows[-1]["miou"]) <= 1.0

    scores_file = tmp_path / "scores.json"
    rc = train_seg_main(
        [
            "eval",
            "--checkpoint",
            str(run / "best.pt"),
            "--output",
            str(scores_file),
            "--output.progress",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "per-class IoU" in out and "confusion matrix" in out and "person" in out
    scores = json.loads(scores_file.read_text())
    best = load_checkpoint(run / "best.pt")
    # evaluation of best.pt reproduces the validation score recorded when it was saved
    assert abs(scores["miou"] - best["metrics"]["miou"]) < 1e-9
    confusion = torch.tensor(scores["confusion"])
    assert confusion.shape == (2, 2) and int(confusion.sum()) > 0


def test_smoke_cls_trains_top1_top5(tmp_path, capsys):
    assert train_cls_main(["--config", "smoke_cls", "--train.epochs", "1", *quiet(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out
    ckpt = load_checkpoint(tmp_path / "smoke_cls" / "last.pt")
    assert ckpt["task"] == "cls" and len(ckpt["classes"]) == 3
    assert 0.0 <= ckpt["metrics"]["top1"] <= ckpt["metrics"]["top5"] <= 1.0
    assert any(k.startswith("encoder.") for k in ckpt["model"])
