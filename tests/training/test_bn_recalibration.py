"""BatchNorm re-estimation (train-seg / train-cls recalibrate-bn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from train_helpers import quiet

from seg_service.runtime import load_model
from seg_training.cli import train_seg_main
from seg_training.engine.bn_recalibration import batchnorm_layers, recalibrate_batchnorm, recalibration_record
from seg_training.engine.checkpoint import load_checkpoint
from seg_training.export import main as export_main
from seg_training.models import create_model


def test_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)
    )
    bn0 = model[1]
    bn0.running_mean.fill_(7.0)  # stale statistics from "training"
    model.eval()
    batches = [(torch.randn(5, 3, 8, 8) * 2 + 1, torch.zeros(5)) for _ in range(4)]
    layers, seen = recalibrate_batchnorm(model, batches)
    assert (layers, seen) == (2, 20)
    assert not model.training and bn0.momentum == 0.1  # mode and momentum restored
    # First layer: its input does not depend on the statistics, so the expected values follow directly.
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats])
    torch.testing.assert_close(bn0.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn0.running_var, variances.mean(0), rtol=1e-5, atol=1e-5)
    assert int(bn0.num_batches_tracked) == 4


def test_max_batches_and_empty_input():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    batches = [torch.randn(2, 3, 4, 4) for _ in range(5)]
    assert recalibrate_batchnorm(model, batches, max_batches=2) == (1, 4)
    assert int(model[1].num_batches_tracked) == 2
    from seg_training.data.errors import InputError

    with pytest.raises(InputError, match="no batches"):
        recalibrate_batchnorm(model, [])
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 2, 1)), batches) == (0, 0)


def test_groupnet_layers_are_all_found():
    model = create_model(
        {"arch": "groupnet_resnet18", "task": "seg", "num_classes": 2, "k": 2, "width": 0.25}
    )
    layers = batchnorm_layers(model)
    assert len(layers) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 10


@pytest.mark.slow
def test_cli_recalibrates_a_trained_checkpoint_and_export_reads_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert (
        train_seg_main(
            ["--config", "smoke_seg", "--train.epochs", "1", "--train.steps_per_epoch", "2", *quiet(runs)]
        )
        == 0
    )
    best = runs / "smoke_seg" / "best.pt"
    out = tmp_path / "best_bn.pt"
    capsys.readouterr()
    assert (
        train_seg_main(
            [
                "recalibrate-bn",
                "--checkpoint",
                str(best),
                "--out",
                str(out),
                "--batches",
                "2",
                "--output.progress",
                "false",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out
    assert "re-estimated" in line and "val mIoU" in line and str(out) in line
    source, result = load_checkpoint(best), load_checkpoint(out)
    record = recalibration_record(result)
    assert record["images"] == 2 * 2 and record["layers"] > 10 and record["metric"] == "miou"
    assert record["after"] == pytest.approx(result["metrics"]["miou"])
    changed = [
        k
        for k in source["model"]
        if "running_" in k and not torch.equal(source["model"][k], result["model"][k])
    ]
    assert changed, "no running statistic changed"
    weights = [k for k in source["model"] if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(source["model"][k], result["model"][k]) for k in weights)  # weights untouched
    # The recalibrated checkpoint exports, and its statistics reach the packed model.
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    logits = {}
    for name, path in (("source", best), ("recalibrated", out)):
        assert export_main(["--checkpoint", str(path), "--out", str(tmp_path / f"{name}.gnpk")]) in (0, None)
        logits[name] = load_model(tmp_path / f"{name}.gnpk").predict_logits(image)
    assert logits["source"].shape == logits["recalibrated"].shape
    assert not np.allclose(logits["source"], logits["recalibrated"])


@pytest.mark.slow
def test_cli_refuses_to_overwrite_its_input(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert (
        train_seg_main(
            ["--config", "smoke_seg", "--train.epochs", "1", "--train.steps_per_epoch", "1", *quiet(runs)]
        )
        == 0
    )
    best = runs / "smoke_seg" / "best.pt"
    assert train_seg_main(["recalibrate-bn", "--checkpoint", str(best), "--out", str(best)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert (
        train_seg_main(
            ["recalibrate-bn", "--checkpoint", str(best), "--out", str(tmp_path / "x.pt"), "--batches", "0"]
        )
        == 2
    )


@pytest.mark.slow
def test_cls_checkpoints_recalibrate_too(tmp_path, capsys):
    from seg_training.cli import train_cls_main

    runs = tmp_path / "runs"
    assert (
        train_cls_main(
            ["--config", "smoke_cls", "--train.epochs", "1", "--train.steps_per_epoch", "1", *quiet(runs)]
        )
        == 0
    )
    out = tmp_path / "enc_bn.pt"
    capsys.readouterr()
    assert (
        train_cls_main(
            [
                "recalibrate-bn",
                "--checkpoint",
                str(runs / "smoke_cls" / "best.pt"),
                "--out",
                str(out),
                "--batches",
                "1",
                "--output.progress",
                "false",
            ]
        )
        == 0
    )
    assert "val top-1" in capsys.readouterr().out
    assert recalibration_record(load_checkpoint(out))["metric"] == "top1"
