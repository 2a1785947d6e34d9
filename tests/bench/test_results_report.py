"""seg_bench.results: the Markdown tables it writes into docs/results.md come from results.json."""

from __future__ import annotations

import json

from seg_bench.results import REPO, markdown_tables, replace_marked


def test_tables_match_the_recorded_results():
    results = json.loads((REPO / "docs/results/results.json").read_text())
    shipped, ablation = markdown_tables(results)
    assert shipped.count("\n") == 1 + len(results["shipped"])
    assert ablation.count("\n") == 1 + len(results["ablation"])
    person = results["shipped"]["person"]
    assert f"| person | {100 * person['miou']:.2f} |" in shipped
    doc = (REPO / "docs/results.md").read_text()
    assert shipped in doc and ablation in doc, (
        "docs/results.md is out of date: run python -m seg_bench.results"
    )


def test_replace_marked_keeps_the_prose():
    text = "intro\n<!-- results:t -->\nold\n<!-- /results:t -->\noutro"
    assert replace_marked(text, "t", "new") == "intro\n<!-- results:t -->\nnew\n<!-- /results:t -->\noutro"
    assert replace_marked(text, "other", "new") == text


def _rows(path) -> int:
    """Rows of a picture of plot_examples (3 inches, 100 dpi each)."""
    import cv2

    return round(cv2.imread(str(path)).shape[0] / 300)


def test_pictures_show_the_shipped_files_on_validation_images(tmp_path):
    """The pictures' data tree built from the test copies of CCP, portraits and CamVid; predictions
    by the shipped files. Two classes are drawn over the photo, more as solid colours."""
    import numpy as np
    import pytest

    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    import cv2

    from seg_bench.results import plot_shipped_examples

    tests_data = REPO / "tests" / "data"
    data = tmp_path / "data"
    data.mkdir()
    (data / "ccp").symlink_to(tests_data / "ccp")
    (data / "portraits").symlink_to(tests_data / "portraits")
    (data / "camvid").mkdir()
    (data / "camvid" / "val").symlink_to(tests_data / "camvid")
    examples = [
        (
            "person",
            [
                ("ccp_person_w05k4", "ccp", [], (0,)),
                ("person", "portraits", [("data.layout", "folder"), ("data.val_split", "val.txt")], (0, 1)),
            ],
        ),
        ("camvid", [("camvid_w05k4", "camvid", [], (0, 3))]),
    ]
    written = plot_shipped_examples(data, REPO / "weights", tmp_path / "img", examples)
    assert [p.name for p in written] == ["examples_person.png", "examples_camvid.png"]
    assert [_rows(p) for p in written] == [3, 2]
    # camvid's prediction column holds only palette colours (solid); person's does not (overlay)
    from seg_service.runtime import load_model

    palette = load_model(REPO / "weights" / "camvid.gnpk").palette
    camvid = cv2.imread(str(written[1]))[:, :, ::-1]
    column = camvid[40:260, 620:880].reshape(-1, 3).astype(int)
    near = np.abs(column[:, None, :] - palette[None, :, :].astype(int)).sum(-1).min(1) <= 12
    white = (column >= 245).all(1)
    assert (near | white).mean() > 0.9
    person = cv2.imread(str(written[0]))[:, :, ::-1]
    column = person[40:260, 620:880].reshape(-1, 3).astype(int)
    palette = load_model(REPO / "weights" / "person.gnpk").palette.astype(int)
    near = np.abs(column[:, None, :] - palette[None, :, :]).sum(-1).min(1) <= 12
    white = (column >= 245).all(1)
    assert (near | white).mean() < 0.5


def test_pictures_command_on_the_real_data(shared_data, tmp_path):
    """python -m seg_bench.results --pictures: the documented pictures, from ../shared/data."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seg_bench.results",
            "--pictures",
            "--data",
            str(shared_data),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.split() == [str(tmp_path / "img" / f"examples_{m}.png") for m in ("person", "camvid")]
    assert [_rows(tmp_path / "img" / f"examples_{m}.png") for m in ("person", "camvid")] == [4, 3]
