"""Thin and rare classes: SegNet's median-frequency class weights (``loss.class_weights``) and the
per-class decision biases that ``train-seg tune-postprocess`` fits for models of more than two classes.
Real CamVid frames and masks from tests/data/camvid; the shipped camvid model for the tuning run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import REPO, TEST_DATA, quiet

from seg_service.runtime import load_model, resize_nearest
from seg_training.cli import train_seg_main
from seg_training.data import read_image, read_mask
from seg_training.data.check import check_before_training, check_pairs, median_frequency_weights
from seg_training.data.labels import build_label_map
from seg_training.data.segmentation import folder_pairs
from seg_training.engine.config import ConfigError, load_config
from seg_training.engine.loaders import build_datasets
from seg_training.engine.metrics import SegmentationLoss, confusion_matrix
from seg_training.engine.postprocess_tuning import (
    BIASES,
    _class_bias_confusions,
    _held_out_grid,
    candidate_filters,
    fit_class_biases,
    fold_blocks,
)
from seg_training.engine.trainer import resolve_class_weights
from seg_training.export import repack_model

CAMVID = TEST_DATA / "camvid"
CAMVID_CLASSES = "sky,building,pole,road,pavement,tree,signsymbol,fence,car,pedestrian,bicyclist"
VOID = 11


def camvid_overrides() -> list[tuple[str, object]]:
    return [
        ("data.layout", "folder"),
        ("data.root", str(CAMVID)),
        ("data.train_split", "all"),
        ("data.val_split", "all"),
    ]


# --------------------------------------------------------------------------- median-frequency weights


def test_median_frequency_weights_follow_segnets_definition():
    """freq_c = pixels of c / labelled pixels of the images holding c; weight = median(freq) / freq_c,
    recomputed here from the masks by hand."""
    pairs = folder_pairs(CAMVID, "all")
    table = build_label_map(11, 255, None, (VOID,))
    report = check_pairs({"train": pairs}, table, CAMVID_CLASSES.split(","), 255, 1, False)
    weights = median_frequency_weights(report.splits["train"])

    pixels, denominators = np.zeros(11), np.zeros(11)
    for _, mask_path in pairs:
        mask = read_mask(mask_path)
        labelled = mask[mask != VOID]
        counts = np.bincount(labelled, minlength=11)[:11]
        pixels += counts
        denominators += (counts > 0) * labelled.size
    present = pixels > 0
    freq = pixels[present] / denominators[present]
    expected = np.zeros(11)
    expected[present] = np.median(freq) / freq
    np.testing.assert_allclose(weights, expected, rtol=1e-12)
    names = CAMVID_CLASSES.split(",")
    # the thin classes are weighted up, road and sky down
    assert weights[names.index("pole")] > 1 > weights[names.index("road")]
    assert weights[names.index("sky")] < 1
    assert json.loads(json.dumps(report.to_dict()))["splits"]["train"]["median_frequency_weights"][0] == (
        pytest.approx(weights[0])
    )


def test_weighted_loss_is_torchs_weighted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, 0, :3] = 255
    weights = [0.5, 2.0, 1.0, 4.0]
    loss = SegmentationLoss(ce=1.0, class_weights=weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(loss, expected)
    plain = SegmentationLoss(ce=1.0)(logits, target)
    assert not torch.allclose(loss, plain)


@pytest.mark.parametrize("bad", ["inverse", [1.0, 2.0, 3.0], [1.0, -1.0], [True, 1.0]])
def test_bad_class_weights_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError, match="loss.class_weights must be"):
        load_config("seg", REPO / "seg_training/configs/smoke_seg.yaml", [("loss.class_weights", bad)])


def test_training_with_median_frequency_weights_logs_and_uses_them(tmp_path, capsys):
    classes = CAMVID_CLASSES
    code = train_seg_main(
        [
            "--config",
            "smoke_seg",
            *[f"--{key}={value}" for key, value in camvid_overrides()],
            "--data.classes",
            classes,
            "--data.remap",
            "null",
            "--data.void_labels",
            f"[{VOID}]",
            "--train.epochs",
            "1",
            "--loss.class_weights",
            "median_frequency",
            *quiet(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    line = next(
        x for x in (out.out + out.err).splitlines() if x.startswith("class weights (median frequency)")
    )
    logged = {
        name: float(value) for name, value in (part.split() for part in line.split(": ", 1)[1].split(", "))
    }
    assert list(logged) == classes.split(",")
    assert logged["pole"] > 1 > logged["road"]


def test_weights_from_the_data_checks_report_equal_those_read_afresh():
    """A run takes the weights from its start-of-run data check (no second read of the masks); with
    --data.check false it reads the masks itself: the same numbers either way."""
    overrides = [
        *camvid_overrides(),
        ("data.classes", CAMVID_CLASSES),
        ("data.remap", None),
        ("data.void_labels", [VOID]),
        ("loss.class_weights", "median_frequency"),
    ]
    config = load_config("seg", REPO / "seg_training/configs/smoke_seg.yaml", overrides)
    config["output"]["progress"] = False
    train_set, val_set, _ = build_datasets(config)
    report, failure = check_before_training(config, train_set, val_set, False, lambda _line: None)
    assert failure is None and report is not None
    logged: list[str] = []
    from_report = resolve_class_weights(config, train_set, logged.append, report)
    afresh = resolve_class_weights(config, train_set, logged.append)
    assert from_report == afresh and len(afresh) == 11
    assert logged[0] == logged[1] and logged[0].startswith("class weights (median frequency): sky ")


# --------------------------------------------------------------------------- per-class decision biases


def test_one_pass_bias_confusions_equal_the_argmax_for_every_grid_value():
    rng = np.random.default_rng(0)
    n, pixels = 5, 4000
    scores = rng.normal(size=(pixels, n)).astype(np.float32)
    target = rng.integers(0, n, pixels)
    bias = rng.normal(size=n) * 0.3
    grid = np.asarray(BIASES)
    for cls in range(n):
        cms = _class_bias_confusions(scores, target, bias, cls, grid)
        for k in range(len(grid)):
            trial = bias.copy()
            trial[cls] = grid[k]
            expected = confusion_matrix((scores + trial.astype(np.float32)).argmax(1), target, n, -1)
            np.testing.assert_array_equal(cms[k], expected)


def test_fitted_biases_recover_a_class_the_scores_hold_back():
    """Class 2 is the truth on 5 % of pixels but its score is pulled down by 1.5: without a bias it
    almost never wins; the fit gives it back about +1.5 and a higher mIoU."""
    rng = np.random.default_rng(1)
    n, pixels = 4, 40000
    target = rng.choice(n, size=pixels, p=[0.45, 0.3, 0.05, 0.2])
    scores = rng.normal(scale=0.5, size=(pixels, n)).astype(np.float32)
    scores[np.arange(pixels), target] += 1.0
    scores[:, 2] -= 1.5
    before = confusion_matrix(scores.argmax(1), target, n, -1)
    bias, cm = fit_class_biases(scores, target)
    relative = bias[2] - np.median(np.delete(bias, 2))
    assert 1.0 <= relative <= 2.0
    np.testing.assert_array_equal(
        cm, confusion_matrix((scores + bias.astype(np.float32)).argmax(1), target, n, -1)
    )
    iou = lambda c: np.diag(c) / (c.sum(0) + c.sum(1) - np.diag(c))  # noqa: E731
    assert iou(cm).mean() > iou(before).mean() + 0.05
    assert iou(cm)[2] > iou(before)[2] + 0.3


def test_tuning_a_multiclass_model_writes_class_biases_scored_by_the_runtime(tmp_path, capsys):
    """The shipped camvid model tuned on the six CamVid frames of tests/data, with no filter flag: a
    model of 11 classes gets the bias only, the biases are chosen and the written file's own
    predict() gives exactly the reported per-class IoU."""
    out, report_path = tmp_path / "camvid_tuned.gnpk", tmp_path / "report.json"
    code = train_seg_main(
        [
            "tune-postprocess",
            "--packed",
            str(REPO / "weights" / "camvid.gnpk"),
            "--config",
            "camvid_w05k4",
            *[f"--{key}={value}" for key, value in camvid_overrides()],
            "--out",
            str(out),
            "--threads",
            "1",
            "--report",
            str(report_path),
            "--output.progress",
            "false",
        ]
    )
    assert code == 0
    assert "11 classes: no guided-filter grid" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert all(row["guided_filter"] is None for row in report["candidates"])  # the many-class default
    best = report["best"]
    assert best["miou"] >= report["baseline"]["miou"]
    tuned = load_model(out)
    assert isinstance(best["bias"], list) and len(best["bias"]) == 11, "six frames always gain from biases"
    assert tuned.postprocess["logit_bias"] == best["bias"]
    cm = np.zeros((11, 11), dtype=np.int64)
    for image_path, mask_path in folder_pairs(CAMVID, "all"):
        mask = read_mask(mask_path).astype(np.int64)
        mask[mask == VOID] = 255
        cm += confusion_matrix(tuned.predict(read_image(image_path)), mask, 11, 255)
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1) * 100
    np.testing.assert_allclose(iou, best["iou"], atol=1e-9)


def test_filter_flag_tries_the_grid_on_a_multiclass_model(tmp_path):
    """--filter scores every guided filter of the grid on a many-class model too (one frame)."""
    report_path = tmp_path / "report.json"
    args = ["tune-postprocess", "--packed", str(REPO / "weights" / "camvid.gnpk"), "--config", "camvid_w05k4"]
    args += [f"--{key}={value}" for key, value in camvid_overrides()]
    args += ["--out", str(tmp_path / "x.gnpk"), "--threads", "1", "--limit", "1", "--filter"]
    assert train_seg_main([*args, "--report", str(report_path), "--output.progress", "false"]) == 0
    filters = [row["guided_filter"] for row in json.loads(report_path.read_text())["candidates"]]
    as_text = lambda spec: json.dumps(spec, sort_keys=True)  # noqa: E731
    # a set: the fitted-bias row repeats the best filter
    assert set(map(as_text, filters)) == set(map(as_text, candidate_filters()))


def test_filter_flags_exclude_each_other(capsys):
    args = ["tune-postprocess", "--packed", "x.gnpk", "--out", "y.gnpk", "--filter", "--no-filter"]
    with pytest.raises(SystemExit):
        train_seg_main(args)
    assert "not allowed with argument" in capsys.readouterr().err


# --------------------------------------------------------------------------- held-out estimate (--folds)


def iou_percent(cm: np.ndarray) -> list[float]:
    """Per-class IoU in percent of a confusion matrix (0 for a class in neither truth nor prediction)."""
    return list(np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1) * 100)


def test_fold_blocks_are_contiguous_and_balanced():
    blocks = fold_blocks(7, 2)
    assert blocks.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert fold_blocks(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert fold_blocks(5, 0).tolist() == [0] * 5


def test_held_out_grid_scores_each_block_with_what_the_other_blocks_chose():
    """Block 0 favours candidate 1 and block 1 candidate 0: held out, each block gets the other's
    choice, so the estimate is worse than either block's own best (what an in-sample fit reports)."""
    good, bad = np.array([[90, 10], [10, 90]]), np.array([[50, 50], [50, 50]])
    block_cms = np.zeros((2, 1, 2, 2, 2), dtype=np.int64)  # [block, filter, bias, n, n]
    block_cms[0, 0, 0], block_cms[0, 0, 1] = bad, good
    block_cms[1, 0, 0], block_cms[1, 0, 1] = good * 3, bad  # block 1 outweighs block 0
    held = _held_out_grid(block_cms, zero_bias=0)
    assert held["folds"] == 2
    # block 0 is scored with candidate 0 (block 1's best), block 1 with candidate 1 (block 0's best)
    assert held["fitted"]["iou"] == pytest.approx(iou_percent(bad + bad))
    assert held["none"]["iou"] == pytest.approx(iou_percent(block_cms[:, 0, 0].sum(axis=0)))


def test_tuning_on_the_validation_split_reports_a_held_out_estimate(tmp_path):
    """``--split val --folds 2`` fits on the config's validation split (the training split here names
    a folder that does not exist, so it cannot have been read) and the report's held-out figure is
    recomputed by hand: biases fitted on frames 1-3 score frames 4-6 and the other way round."""
    out, report_path = tmp_path / "camvid_val.gnpk", tmp_path / "report.json"
    overrides = dict(camvid_overrides(), **{"data.train_split": "no_such_split"})
    args = ["tune-postprocess", "--packed", str(REPO / "weights" / "camvid.gnpk"), "--config", "camvid_w05k4"]
    args += [f"--{key}={value}" for key, value in overrides.items()]
    args += ["--out", str(out), "--threads", "1", "--no-filter", "--split", "val", "--folds", "2"]
    assert train_seg_main([*args, "--report", str(report_path), "--output.progress", "false"]) == 0
    report = json.loads(report_path.read_text())
    assert report["split"] == "all" and report["images"] == 6
    held = report["held_out"]
    assert held["folds"] == 2

    model = load_model(REPO / "weights" / "camvid.gnpk")
    scores, targets = [], []
    for image_path, mask_path in folder_pairs(CAMVID, "all"):
        mask = read_mask(mask_path).astype(np.int64)
        logits = model.processed_logits(read_image(image_path))[0]  # as the tool: nearest to the mask
        logits = resize_nearest(logits, *mask.shape)[::2, ::2].reshape(-1, 11)
        mask = mask[::2, ::2].ravel()
        keep = mask != VOID
        scores.append(logits[keep]), targets.append(mask[keep])
    base, fitted = np.zeros((11, 11), np.int64), np.zeros((11, 11), np.int64)
    for inside, outside in (([0, 1, 2], [3, 4, 5]), ([3, 4, 5], [0, 1, 2])):
        bias, _ = fit_class_biases(
            np.concatenate([scores[i] for i in outside]), np.concatenate([targets[i] for i in outside])
        )
        block_scores, block_targets = (
            np.concatenate([scores[i] for i in inside]),
            np.concatenate([targets[i] for i in inside]),
        )
        base += confusion_matrix(block_scores.argmax(1), block_targets, 11, -1)
        fitted += confusion_matrix((block_scores + bias.astype(np.float32)).argmax(1), block_targets, 11, -1)
    assert held["none"]["iou"] == pytest.approx(iou_percent(base), abs=1e-9)
    assert held["fitted"]["iou"] == pytest.approx(iou_percent(fitted), abs=1e-9)
    # the in-sample fit is what the file stores, and it is never below its own held-out estimate here
    assert load_model(out).postprocess["logit_bias"] == report["best"]["bias"]
    assert report["best"]["miou"] >= held["fitted"]["miou"]


def test_test_time_candidates_are_each_fitted_and_the_best_held_out_is_written(tmp_path):
    """``--test-time`` twice: each candidate's scores are those of a plain tune-postprocess of the file
    repacked with its passes, and the file written stores the candidate with the best held-out mIoU:
    its passes and its biases. No candidate file is left behind."""
    shipped = REPO / "weights" / "camvid.gnpk"
    common = ["--config", "camvid_w05k4", *[f"--{key}={value}" for key, value in camvid_overrides()]]
    common += "--threads 1 --no-filter --split val --folds 2 --output.progress false".split()
    specs = [None, {"flip": False, "scales": [1.0, 1.5]}]
    out, report_path = tmp_path / "chosen" / "camvid.gnpk", tmp_path / "report.json"
    args = ["tune-postprocess", "--packed", str(shipped), *common, "--out", str(out)]
    args += ["--report", str(report_path)]
    for spec in specs:
        args += ["--test-time", "none" if spec is None else json.dumps(spec)]
    assert train_seg_main(args) == 0
    rows = json.loads(report_path.read_text())["test_time_candidates"]

    alone = []
    for index, spec in enumerate(specs):
        repacked, report_alone = tmp_path / f"in{index}.gnpk", tmp_path / f"alone{index}.json"
        repack_model(shipped, repacked, test_time=spec)
        args = ["tune-postprocess", "--packed", str(repacked), *common, "--report", str(report_alone)]
        assert train_seg_main([*args, "--out", str(tmp_path / f"alone{index}.gnpk")]) == 0
        alone.append(json.loads(report_alone.read_text()))
    assert [row["held_out_miou"] for row in rows] == [a["held_out"]["fitted"]["miou"] for a in alone]
    assert [row["miou"] for row in rows] == [a["best"]["miou"] for a in alone]
    assert [row["passes"] for row in rows] == [1, 2] and rows[1]["pixel_cost"] == pytest.approx(3.25)
    winner = int(np.argmax([row["held_out_miou"] for row in rows]))
    assert [row["chosen"] for row in rows] == [index == winner for index in range(len(specs))]
    written = load_model(out)
    assert written.test_time.to_json() == rows[winner]["test_time"]
    assert (written.postprocess or None) == alone[winner]["postprocess"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["camvid.gnpk"]


@pytest.mark.parametrize("folds", ["1", "7"])
def test_bad_fold_counts_are_one_line_errors(tmp_path, capsys, folds):
    args = ["tune-postprocess", "--packed", str(REPO / "weights" / "camvid.gnpk"), "--config", "camvid_w05k4"]
    args += [f"--{key}={value}" for key, value in camvid_overrides()]
    args += ["--out", str(tmp_path / "x.gnpk"), "--no-filter", "--folds", folds, "--output.progress", "false"]
    assert train_seg_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--folds" in err and len(err.splitlines()) == 1
