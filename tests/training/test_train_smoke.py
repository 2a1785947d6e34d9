"""The shipped smoke configs train, write checkpoints and logs, and `train-seg eval` reads them."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from train_helpers import quiet

from seg_training.cli import train_cls_main, train_seg_main
from seg_training.engine.checkpoint import load_checkpoint
from seg_training.engine.config import CONFIG_DIR, load_config, model_config_for
from seg_training.engine.distributed import DistInfo
from seg_training.engine.trainer import build_model

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


def test_compiled_training_step_matches_eager(tmp_path):
    """train.compile: the compiled step computes the eager step's loss and gradients (dropout off,
    which inductor draws from its own generator), a compiled run trains end to end, and its
    checkpoint keeps the network's own parameter names."""
    config = load_config("seg", CONFIG_DIR / "smoke_seg.yaml")
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    model_cfg = model_config_for(config, 2)
    steps = {}
    for compiled in (False, True):
        config["train"]["compile"] = compiled
        torch.manual_seed(0)
        model, step_model = build_model(config, model_cfg, info, lambda _: None, init=False)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        loss = step_model(images).logsumexp(1).mean()
        loss.backward()
        steps[compiled] = (model, float(loss.detach()), {n: p.grad for n, p in model.named_parameters()})
    (eager, eager_loss, eager_grads), (_, loss, grads) = steps[False], steps[True]
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in grads.items():  # fused kernels sum in another order: compare by norm
        error = float((grad - eager_grads[name]).norm() / eager_grads[name].norm().clamp_min(1e-12))
        print(f"{name}: relative gradient error {error:.2e}")
        assert error < 1e-3, name

    args = ["--config", "smoke_seg", "--train.epochs", "1", "--train.compile", "true", *quiet(tmp_path)]
    assert train_seg_main(args) == 0
    ckpt = load_checkpoint(tmp_path / "smoke_seg" / "last.pt")
    assert set(ckpt["model"]) == set(eager.state_dict())
