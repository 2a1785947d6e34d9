"""Time-budgeted runs, full-precision comparison networks through train-seg, and the shipped configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import REPO, quiet

from seg_training.cli import train_seg_main
from seg_training.engine.checkpoint import load_checkpoint
from seg_training.engine.config import from_json, load_config, model_config_for
from seg_training.engine.optim import lr_factor_fn
from seg_training.engine.time_budget import fit_epochs_to_budget
from seg_training.models import create_model


def test_fit_epochs_to_budget_arithmetic():
    # 10 s per epoch, no validation cost worth counting: 100 s left after 2 epochs -> 12 in all.
    assert fit_epochs_to_budget(100.0, 2, 50, 10.0, 0.0, 1) == 12
    # Validation of a set as large as the training set every epoch costs a third more.
    assert fit_epochs_to_budget(100.0, 2, 50, 7.5, 1.0, 1) == 12
    assert fit_epochs_to_budget(1e9, 2, 50, 10.0, 0.1, 5) == 50  # never more than asked
    assert fit_epochs_to_budget(-5.0, 3, 50, 10.0, 0.1, 5) == 3  # never fewer than done


@pytest.mark.slow
def test_time_budget_shortens_the_run_and_its_schedule(tmp_path, capsys):
    runs = tmp_path / "runs"
    # A budget far below one epoch: the run stops after its second epoch, and the poly schedule
    # is rescaled so the learning rate reaches zero there, as in a planned 2-epoch run.
    assert (
        train_seg_main(
            [
                "--config",
                "smoke_seg",
                "--train.epochs",
                "6",
                "--train.steps_per_epoch",
                "2",
                "--train.time_budget_minutes",
                "0.0001",
                *quiet(runs),
            ]
        )
        == 0
    )
    out_text = capsys.readouterr().out
    # Decided after the second epoch, and said after that epoch's line.
    assert out_text.index("epoch 2/2 ") < out_text.index("2 epochs instead of 6 (timed on epoch 2)")
    out = runs / "smoke_seg"
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert "miou" in rows[-1] and rows[-1]["miou"] != ""  # the new last epoch was validated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epochs"] == 2 and ckpt["budget_applied"]
    # The schedule a resumed run rebuilds from the checkpoint ends at zero at the final step.
    train_cfg = from_json(ckpt["config"])["train"]
    assert train_cfg["epochs"] == 2
    assert lr_factor_fn(train_cfg, 2)(ckpt["step"]) == 0.0
    assert "epochs: 2" in (out / "config.yaml").read_text()

    # Resuming keeps the fitted count; --train.epochs on the command line extends the run, and the
    # schedule is rebuilt over the new count.
    resume = ["--config", "smoke_seg", "--resume", "--train.steps_per_epoch", "2", *quiet(runs)]
    assert train_seg_main(resume) == 0
    assert load_checkpoint(out / "last.pt")["step"] == ckpt["step"]  # nothing left to train
    capsys.readouterr()
    assert train_seg_main([*resume, "--train.epochs", "3"]) == 0
    assert "--train.epochs 3 replaces the 2 epochs the time budget fitted" in capsys.readouterr().out
    extended = load_checkpoint(out / "last.pt")
    assert extended["epochs"] == 3 and extended["step"] == ckpt["step"] + 2
    assert [int(r["epoch"]) for r in csv.DictReader((out / "log.csv").open())] == [1, 2, 3]
    assert lr_factor_fn(from_json(extended["config"])["train"], 2)(ckpt["step"]) > 0.0


@pytest.mark.slow
def test_reference_network_trains_through_train_seg(tmp_path):
    runs = tmp_path / "runs"
    assert (
        train_seg_main(
            [
                "--config",
                "smoke_seg",
                "--model.arch",
                "lraspp_mobilenet_v3_large",
                "--train.epochs",
                "1",
                "--train.steps_per_epoch",
                "1",
                "--output.name",
                "lraspp",
                *quiet(runs),
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(runs / "lraspp" / "best.pt")
    assert ckpt["model_config"] == {"arch": "lraspp_mobilenet_v3_large", "task": "seg", "num_classes": 2}
    create_model(ckpt["model_config"]).load_state_dict(ckpt["model"])


SHIPPED = ["imagenette_w05k4", "ccp_person_w05k4", "camvid_w05k4"]
ABLATION = sorted(p.stem for p in (REPO / "seg_training/configs/ablation").glob("*.yaml") if p.stem != "base")


@pytest.mark.parametrize("name", SHIPPED + [f"ablation/{n}" for n in ABLATION])
def test_shipped_and_ablation_configs_build(name):
    task = "cls" if name.startswith("imagenette") else "seg"
    config = load_config(task, f"seg_training/configs/{name}.yaml", [])
    classes = config["data"].get("classes") or list(range(10))
    model = create_model(model_config_for(config, len(classes)))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert Path(config["data"]["root"]).name in {"ccp", "camvid", "imagenette96"}


def test_ablation_rows_differ_from_the_base_row_in_one_model_choice():
    base = load_config("seg", "seg_training/configs/ablation/base.yaml", [])
    for name in ABLATION:
        config = load_config("seg", f"seg_training/configs/ablation/{name}.yaml", [])
        same = ("seed", "data", "train", "loss", "eval")
        assert {k: config[k] for k in same} == {k: base[k] for k in same}, name
        assert (
            config["output"]["name"] == name
            and config["model"] != base["model"]
            or name == "groupnet_k4_bpac"
        )


def test_packed_model_scored_through_the_runtime(packed_model_path, tmp_path, capsys):
    from PIL import Image

    from seg_service.runtime import load_model

    out = tmp_path / "scores.json"
    assert (
        train_seg_main(
            [
                "eval",
                "--packed",
                str(packed_model_path),
                "--config",
                "smoke_seg",
                "--output",
                str(out),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert "through the packed runtime" in capsys.readouterr().out
    scores = json.loads(out.read_text())
    # The same figure computed independently: the runtime's masks against the CCP masks (label > 0).
    config = load_config("seg", "seg_training/configs/smoke_seg.yaml", [])
    names = [
        p.stem for p in sorted((REPO / "tests/data/ccp/masks").glob("*.png")) if "0905" <= p.stem <= "1004"
    ]
    assert scores["images"] == len(names) > 0
    flipped = tmp_path / "scores_flip.json"
    assert (
        train_seg_main(
            [
                "eval",
                "--packed",
                str(packed_model_path),
                "--config",
                "smoke_seg",
                "--output",
                str(flipped),
                "--threads",
                "1",
                "--eval.flip",
                "true",
                "--output.progress",
                "false",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "(2 passes: scale 1 + flip)" in captured.out
    assert "packed eval" not in captured.err  # --output.progress false silences the progress bar
    model = load_model(packed_model_path)
    for path, flip in ((out, False), (flipped, True)):
        inter = union = 0
        for name in names:
            rgb = np.asarray(Image.open(REPO / f"tests/data/ccp/images/{name}.jpg").convert("RGB"))
            person = np.asarray(Image.open(REPO / f"tests/data/ccp/masks/{name}.png")) > 0
            pred = model.predict(rgb, flip=flip) == 1
            inter += int((pred & person).sum())
            union += int((pred | person).sum())
        scores = json.loads(path.read_text())
        assert scores["flip"] is flip
        assert scores["iou"]["person"] == pytest.approx(inter / union, abs=1e-9)
    assert config["data"]["classes"] == ["background", "person"]


def test_packed_eval_runs_the_file_test_time(packed_model_path, tmp_path, capsys):
    """train-seg eval --packed scores a file with its stored test-time augmentation; --eval.flip and
    --eval.scales replace its parts; bad scales are a one-line error."""
    from seg_service import format as gnpk

    source = gnpk.read_model(packed_model_path)
    tta = tmp_path / "tta.gnpk"
    gnpk.write_model(
        tta, dict(source.model, test_time={"flip": True, "scales": [0.75, 1.0]}), source.graph, source.tensors
    )
    common = [
        "eval",
        "--packed",
        str(tta),
        "--config",
        "smoke_seg",
        "--threads",
        "1",
        "--output.progress",
        "false",
    ]
    runs = (
        ([], True, [0.75, 1.0], "(4 passes: scales 0.75, 1 + flip)"),
        (["--eval.flip", "false", "--eval.scales", "[1.0]"], False, [1.0], "runtime, median"),
    )
    for extra, flip, scales, said in runs:
        out = tmp_path / "scores.json"
        assert train_seg_main([*common, "--output", str(out), *extra]) == 0
        assert said in capsys.readouterr().out
        scores = json.loads(out.read_text())
        assert scores["flip"] is flip and scores["scales"] == scales
    assert train_seg_main([*common, "--eval.scales", "[5.0]"]) == 2
    assert "--eval.scales" in capsys.readouterr().err


def test_packed_eval_needs_a_config(packed_model_path, capsys):
    assert train_seg_main(["eval", "--packed", str(packed_model_path)]) == 2
    assert "--config is required" in capsys.readouterr().err
