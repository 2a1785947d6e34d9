"""train-seg tune-postprocess: fits the guided filter and decision bias of a packed model on the
training images only, and its reported scores are the runtime's own; export-model --repack
--postprocess sets or removes one by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from train_helpers import REPO

from seg_service.runtime import load_model
from seg_training.cli import train_seg_main
from seg_training.export import main as export_main

PERSON = REPO / "weights" / "person.gnpk"
CCP = REPO / "tests" / "data" / "ccp"


def pooled_miou(model, names: list[str], refine: bool) -> float:
    cm = np.zeros((2, 2), dtype=np.int64)
    for name in names:
        rgb = np.asarray(Image.open(CCP / "images" / f"{name}.jpg").convert("RGB"))
        truth = (np.asarray(Image.open(CCP / "masks" / f"{name}.png")) > 0).astype(np.int64)
        pred = model.predict(rgb, refine=refine).astype(np.int64)
        cm += np.bincount(truth.ravel() * 2 + pred.ravel(), minlength=4).reshape(2, 2)
    inter = np.diag(cm)
    return float(100 * np.mean(inter / (cm.sum(0) + cm.sum(1) - inter)))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The shipped person model with its post-processing removed, then tuned again on the training
    images of tests/data/ccp (0001-0006; the four 09xx/1001 images are the validation split)."""
    out = tmp_path_factory.mktemp("tune")
    bare = out / "bare.gnpk"
    assert export_main(["--repack", str(PERSON), "--out", str(bare), "--postprocess", "none"]) == 0
    assert load_model(bare).postprocess == {}
    tuned_path, report = out / "tuned.gnpk", out / "report.json"
    code = train_seg_main(
        [
            "tune-postprocess",
            "--packed",
            str(bare),
            "--config",
            "smoke_seg",
            "--out",
            str(tuned_path),
            "--threads",
            "1",
            "--report",
            str(report),
            "--output.progress",
            "false",
        ]
    )
    assert code == 0
    return bare, tuned_path, json.loads(report.read_text())


@pytest.mark.slow
def test_tuning_uses_the_training_split_and_reports_runtime_scores(tuned, capsys):
    bare, tuned_path, report = tuned
    train_names = sorted(p.stem for p in (CCP / "images").glob("*.jpg") if p.stem <= "0904")
    assert report["split"] == "0001-0904" and report["images"] == len(train_names) == 6
    model = load_model(tuned_path)
    assert model.postprocess == (report["postprocess"] or {})
    # The chosen candidate's score and the baseline, recomputed independently through predict().
    assert pooled_miou(model, train_names, refine=True) == pytest.approx(report["best"]["miou"], abs=1e-6)
    assert pooled_miou(model, train_names, refine=False) == pytest.approx(
        report["baseline"]["miou"], abs=1e-6
    )
    assert all(row["miou"] <= report["best"]["miou"] for row in report["candidates"])
    # On real photos the edge-aware filter is chosen and gains over the plain argmax.
    assert model.postprocess.get("guided_filter") is not None
    assert report["best"]["miou"] > report["baseline"]["miou"] + 0.5
    # Weights and graph are copied bit for bit: without refinement the masks are the bare model's.
    rgb = np.asarray(Image.open(CCP / "images" / "0905.jpg").convert("RGB"))
    assert np.array_equal(model.predict(rgb, refine=False), load_model(bare).predict(rgb))


def test_tuning_refuses_to_overwrite_its_input(tmp_path, capsys):
    assert (
        train_seg_main(
            ["tune-postprocess", "--packed", str(PERSON), "--config", "smoke_seg", "--out", str(PERSON)]
        )
        == 2
    )
    assert "--out must differ from --packed" in capsys.readouterr().err


def test_repack_sets_and_removes_a_postprocess_by_hand(tmp_path, capsys):
    out = tmp_path / "biased.gnpk"
    assert (
        export_main(
            ["--repack", str(PERSON), "--out", str(out), "--postprocess", '{"logit_bias": [0, -0.25]}']
        )
        == 0
    )
    assert load_model(out).postprocess == {"logit_bias": [0, -0.25]}
    assert (
        export_main(["--repack", str(PERSON), "--out", str(out), "--postprocess", '{"logit_bias": [0]}']) == 2
    )
    assert "list of 2 numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["--repack", str(PERSON), "--out", str(out), "--postprocess", "{not json"])
    with pytest.raises(SystemExit):  # --postprocess only rewrites a packed file
        export_main(["--checkpoint", "x.pt", "--out", str(out), "--postprocess", "none"])
    capsys.readouterr()
    kept = tmp_path / "renamed.gnpk"
    assert export_main(["--repack", str(PERSON), "--out", str(kept), "--name", "someone"]) == 0
    assert load_model(kept).postprocess == load_model(PERSON).postprocess  # kept unless asked
