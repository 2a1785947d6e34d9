"""train-seg eval --packed --worst / --overlays: each image scored alone, the worst listed and drawn."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from train_helpers import REPO

from seg_training.cli import train_seg_main


def _image_and_truth(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A CCP test image (RGB) and its person mask (label > 0) as 0/1."""
    rgb = np.asarray(Image.open(REPO / f"tests/data/ccp/images/{name}").convert("RGB"))
    mask = np.asarray(Image.open(REPO / f"tests/data/ccp/masks/{name.rsplit('.', 1)[0]}.png"))
    return rgb, (mask > 0).astype(np.uint8)


def _own_miou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Two-class mIoU of one image over the classes in its truth or prediction (CCP: person = label > 0)."""
    ious = []
    for c in (0, 1):
        inter = int(((pred == c) & (truth == c)).sum())
        union = int(((pred == c) | (truth == c)).sum())
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_worst_images_listed_scored_alone_and_drawn(packed_model_path, tmp_path, capsys):
    from seg_service.runtime import load_model

    out, sheets = tmp_path / "scores.json", tmp_path / "sheets"
    args = ["eval", "--packed", str(packed_model_path), "--config", "smoke_seg", "--threads", "1"]
    args += ["--output", str(out), "--worst", "2", "--overlays", str(sheets), "--output.progress", "false"]
    assert train_seg_main(args) == 0
    printed = capsys.readouterr().out
    scores = json.loads(out.read_text())
    rows = scores["per_image"]
    assert len(rows) == scores["images"] >= 2
    assert [r["miou"] for r in rows] == sorted(r["miou"] for r in rows)  # worst first

    # Each row's figure, computed here from the runtime's mask and the CCP mask.
    model = load_model(packed_model_path)
    preds = {}
    for row in rows:
        rgb, truth = _image_and_truth(row["image"])
        pred = preds[row["image"]] = model.predict(rgb)
        assert row["miou"] == pytest.approx(_own_miou(pred, truth), abs=1e-9)
        assert row["pixel_acc"] == pytest.approx(float((pred == truth).mean()), abs=1e-9)

    # The two worst in the printed table, in order, and one sheet each whose third panel marks
    # exactly the wrong pixels in red.
    table = printed[printed.index("worst 2 of") :]
    assert table.index(rows[0]["image"]) < table.index(rows[1]["image"])
    for rank, row in enumerate(rows[:2], 1):
        stem = row["image"].rsplit(".", 1)[0]
        sheet = cv2.imread(str(sheets / f"{rank:03d}_{stem}.png"))
        truth = _image_and_truth(row["image"])[1]
        height, width = truth.shape
        assert sheet.shape == (height, 3 * width, 3)
        errors = sheet[:, 2 * width :]
        red = (errors[..., 2] == 255) & (errors[..., 0] == 0) & (errors[..., 1] == 0)
        assert np.array_equal(red, preds[row["image"]] != truth)
    assert len(list(sheets.iterdir())) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--worst", "3"], "--worst and --overlays score the packed runtime's masks: use them with --packed"),
        (["--worst", "-1"], "--worst must be >= 0, got -1"),
    ],
)
def test_worst_needs_the_packed_runtime(tmp_path, capsys, extra, message):
    assert train_seg_main(["eval", "--checkpoint", str(tmp_path / "x.pt"), *extra]) == 2
    assert f"error: {message}\n" == capsys.readouterr().err
