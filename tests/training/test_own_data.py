"""Your own data, start to finish (issue 22): class lists, name ranges, the data check, the starter
config, and a folder of images + masks trained, exported, evaluated and served."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import REPO, TEST_DATA, quiet, subprocess_env

from seg_training.cli import train_seg_main
from seg_training.data.check import check_config_data, format_report
from seg_training.data.errors import InputError
from seg_training.data.names import parse_class_list, select_range
from seg_training.data.segmentation import find_pairs
from seg_training.engine.config import ConfigError, auto_workers, explicit_keys, load_config
from seg_training.engine.run_info import CPU_HINT, resolved_defaults, slow_start_message

# CamVid stored labels -> the three classes of a small street data set: road (3), car (8), the rest
# "other"; void (11) becomes the ignore index.
STREET_CLASSES = ["other", "road", "car"]


def make_street_folder(dst: Path) -> Path:
    """A user's folder from the CamVid test images: hyphenated names, masks remapped to 3 classes."""
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for i, image in enumerate(sorted((TEST_DATA / "camvid" / "images").glob("*.jpg")), start=1):
        name = f"street-{i:02d}"
        shutil.copy(image, dst / "images" / f"{name}.jpg")
        stored = np.asarray(Image.open(TEST_DATA / "camvid" / "masks" / f"{image.stem}.png"))
        mask = np.zeros_like(stored)
        mask[stored == 3] = 1
        mask[stored == 8] = 2
        mask[stored == 11] = 255
        Image.fromarray(mask).save(dst / "masks" / f"{name}.png")
    (dst / "classes.txt").write_text("# one name per line\n" + "\n".join(STREET_CLASSES) + "\n")
    return dst


# --------------------------------------------------------------------------- class lists


def test_class_lists_parse_the_same_in_every_form(tmp_path, monkeypatch):
    assert parse_class_list("other,road,car") == STREET_CLASSES
    assert parse_class_list(" other, road ,car ") == STREET_CLASSES
    assert parse_class_list(["other", "road", "car"]) == STREET_CLASSES
    (tmp_path / "names.txt").write_text("other\n\n# comment\nroad\ncar\n")
    assert parse_class_list(str(tmp_path / "names.txt")) == STREET_CLASSES
    (tmp_path / "indexed.txt").write_text("0 other\n1 road\n2\tcar\n")
    assert parse_class_list(str(tmp_path / "indexed.txt")) == STREET_CLASSES
    # A relative file name: the working directory first, then the search folders (the data root).
    monkeypatch.chdir(tmp_path)
    assert parse_class_list("names.txt") == STREET_CLASSES
    assert parse_class_list("names.txt", search_dirs=[Path("/nonexistent")]) == STREET_CLASSES
    monkeypatch.chdir(REPO)
    assert parse_class_list("names.txt", search_dirs=[tmp_path]) == STREET_CLASSES


@pytest.mark.parametrize(
    "value, message",
    [
        ("mydata/classes.txt", "no such file"),  # never one class per character
        ("other", "no such file"),
        ("other,road,road", "appears twice"),
        ("other,,car", "empty name"),
        (["person"], "at least 2"),
    ],
)
def test_bad_class_lists_are_refused(value, message):
    with pytest.raises(InputError, match=message):
        parse_class_list(value)


def test_config_and_command_line_take_every_class_list_form(tmp_path):
    folder = make_street_folder(tmp_path / "street")
    for value in ("other,road,car", "[other, road, car]", str(folder / "classes.txt"), "classes.txt"):
        from seg_training.engine.config import parse_value

        config = load_config(
            "seg",
            "seg_training/configs/my_data.yaml",
            [("data.root", str(folder)), ("data.classes", parse_value(value))],
        )
        assert config["data"]["classes"] == STREET_CLASSES, value
    with pytest.raises(ConfigError, match="3 colours for 2 classes"):
        load_config("seg", "seg_training/configs/smoke_seg.yaml", [("data.palette", [[0, 0, 0]] * 3)])


# --------------------------------------------------------------------------- splits


def test_name_ranges_work_with_hyphens_and_percentages():
    stems = [f"frame-{i:03d}" for i in range(1, 41)]
    assert select_range("frame-001-frame-032", stems, "x") == stems[:32]
    assert select_range("frame-033-frame-040", stems, "x") == stems[32:]
    assert select_range("frame-007", stems, "x") == ["frame-007"]  # one existing name
    assert select_range("0%-90%", stems, "x") == stems[:36]
    assert select_range("90%-100%", stems, "x") == stems[36:]  # no overlap, nothing left out
    numbers = [f"{i:04d}" for i in (1, 2, 905, 1001)]
    assert select_range("0001-0904", numbers, "x") == ["0001", "0002"]  # ends need not exist
    with pytest.raises(InputError, match="both ends of a range must be existing"):
        select_range("frame-001-frame-099", stems, "x")
    with pytest.raises(InputError, match="ambiguous"):
        select_range("a-b-c", ["a", "b-c", "a-b", "c"], "x")


def test_folder_layout_splits_hyphenated_names(tmp_path):
    folder = make_street_folder(tmp_path / "street")
    pairs = find_pairs("folder", folder, "street-02-street-04", None, None)
    assert [p[0].stem for p in pairs] == ["street-02", "street-03", "street-04"]


# --------------------------------------------------------------------------- configs


def test_base_takes_a_shipped_config_name(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: smoke_seg\ntrain:\n  epochs: 1\n")
    config = load_config("seg", mine)
    assert config["train"]["epochs"] == 1 and config["model"]["k"] == 2  # the rest from smoke_seg
    assert Path(config["data"]["root"]) == REPO / "tests" / "data" / "ccp"  # relative to the shipped file
    mine.write_text("base: no_such_config\n")
    with pytest.raises(ConfigError, match="base config 'no_such_config'.*shipped config"):
        load_config("seg", mine)


def test_open_worker_count_follows_the_cpus_and_defaults_are_reported():
    config = load_config(
        "seg",
        "seg_training/configs/my_data.yaml",
        [("data.root", "tests/data/camvid"), ("data.classes", "a,b,c")],
    )
    assert config["data"]["workers"] == auto_workers() >= 0
    explicit = explicit_keys("seg_training/configs/my_data.yaml", [("data.root", "x")])
    assert "data.crop_size" in explicit and "data.root" in explicit and "data.check" not in explicit
    defaults = resolved_defaults(config, {"arch": "groupnet_resnet18", "dropout": 0.1, "k": 2}, explicit)
    assert defaults["data.check"] is True and defaults["model.dropout"] == 0.1
    assert "data.crop_size" not in defaults and "model.k" not in defaults


def test_slow_start_message_points_at_the_cpu_config():
    message = slow_start_message(seconds=60.0, images=24, steps=3, iters=100, epochs_left=50, device="cpu")
    assert "0.40 images/s" in message and "20.0 s per step" in message and CPU_HINT in message
    assert "33:20" in message  # one epoch: 100 steps of 20 s
    assert slow_start_message(60.0, 600, 3, 100, 50, "cpu") is None  # 10 images/s is fine
    assert slow_start_message(60.0, 24, 3, 100, 50, "cuda") is None


def test_help_does_not_import_torch():
    code = "import sys, seg_training.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env()).returncode == 0


# --------------------------------------------------------------------------- the data check


def test_check_data_reports_every_problem_with_its_file(ccp_copy, tmp_path, capsys):
    images, masks = ccp_copy / "images", ccp_copy / "masks"
    (masks / "0002.png").unlink()  # missing mask
    Image.open(masks / "0003.png").convert("RGB").save(masks / "0003.png")  # RGB mask
    data = (images / "0004.jpg").read_bytes()
    (images / "0004.jpg").write_bytes(data[: len(data) // 2])  # truncated (corrupt) image
    small = np.asarray(Image.open(masks / "0005.png"))[:100, :100]
    Image.fromarray(small).save(masks / "0005.png")  # size mismatch
    # Two classes, stored labels 2..254 void except 41: CCP's label 41 (a garment) is a bad label.
    void = [v for v in range(2, 255) if v != 41]
    overrides = [
        f"--data.root={ccp_copy}",
        "--data.remap=null",
        f"--data.void_labels={json.dumps(void)}",
        "--output.progress=true",
    ]
    report_file = tmp_path / "report.json"
    code = train_seg_main(
        ["check-data", "--config", "smoke_seg", "--workers", "2", "--output", str(report_file), *overrides]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines()[-1].startswith("error: ")  # on a line of its own
    out = captured.out
    assert f"missing mask for image {images / '0002.jpg'}" in out
    assert f"mask {masks / '0003.png'} has mode RGB" in out
    assert f"unreadable image: {images / '0004.jpg'}" in out
    assert f"size mismatch: image {images / '0005.jpg'}" in out
    assert f"mask {masks / '0001.png'} has label value(s) 41 outside the class list" in out
    assert "background" in out and "(ignored)" in out
    assert "warning: no train mask holds class(es) 'person'" in out  # stored label 1 is rare in CCP
    report = json.loads(report_file.read_text())
    assert report["splits"]["train"]["images"] == 5 and report["splits"]["val"]["images"] == 4
    assert len(report["problems"]) >= 5


def test_check_data_counts_labels_per_class(tmp_path):
    folder = make_street_folder(tmp_path / "street")
    config = load_config(
        "seg",
        "seg_training/configs/my_data.yaml",
        [("data.root", str(folder)), ("data.classes", "classes.txt")],
    )
    report = check_config_data(config, workers=2, progress=False)
    assert report.ok, report.problems
    expected = np.zeros(3, dtype=np.int64)
    ignored = 0
    for mask_path in sorted((folder / "masks").glob("*.png"))[:5]:  # the training split: first 90%
        mask = np.asarray(Image.open(mask_path))
        expected += np.bincount(mask[mask != 255], minlength=3)
        ignored += int((mask == 255).sum())
    train = report.splits["train"]
    assert train.pixels.tolist() == expected.tolist() and train.ignored == ignored
    assert report.splits["val"].images == 1
    assert "road" in format_report(report) and "no problems found" in format_report(report)


def test_training_refuses_masks_that_disagree_with_the_class_list(ccp_copy, tmp_path, capsys):
    # CCP stores 59 clothing labels; two class names without a remap cannot hold them.
    runs = tmp_path / "runs"
    code = train_seg_main(
        ["--config", "smoke_seg", "--data.root", str(ccp_copy), "--data.remap", "null", *quiet(runs)]
    )
    captured = capsys.readouterr()
    assert code == 2
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: data check:") and "outside the class list" in error
    assert "problem(s):" in captured.out  # every file listed before the one-line error
    assert not (runs / "smoke_seg" / "last.pt").exists()  # refused before training


# --------------------------------------------------------------------------- start to finish


@pytest.mark.slow
def test_own_folder_trains_exports_evaluates_and_serves(tmp_path, capsys):
    """docs/training.md "Your own data": the two commands, on a folder of images and masks."""
    folder = make_street_folder(tmp_path / "street")
    runs, models = tmp_path / "runs", tmp_path / "models"
    data = ["--data.root", str(folder), "--data.classes", "classes.txt"]
    small = [
        "--train.epochs",
        "1",
        "--train.steps_per_epoch",
        "2",
        "--data.batch_size",
        "2",
        "--data.crop_size",
        "160",
        "--data.workers",
        "0",
        "--train.time_budget_minutes",
        "null",
    ]
    assert train_seg_main(["--config", "my_data", *data, *small, *quiet(runs)]) == 0
    out = capsys.readouterr().out
    run = runs / "my_data"
    assert f"run folder {run}/" in out and "batch_size 2, workers 0\n" in out and "no problems found" in out
    assert (run / "defaults.yaml").is_file() and (run / "best.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_images"] == 5 and summary["val_images"] == 1

    from seg_training.cli import export_main

    gnpk = models / "street.gnpk"
    assert export_main(["--checkpoint", str(run / "best.pt"), "--out", str(gnpk), "--name", "street"]) == 0
    assert "using the PASCAL VOC colour map" in capsys.readouterr().err

    scores_file = tmp_path / "scores.json"
    assert (
        train_seg_main(
            [
                "eval",
                "--packed",
                str(gnpk),
                "--config",
                "my_data",
                *data,
                "--output",
                str(scores_file),
                "--output.progress",
                "false",
            ]
        )
        == 0
    )
    scores = json.loads(scores_file.read_text())
    assert 0.0 <= scores["miou"] <= 1.0 and list(scores["iou"]) == STREET_CLASSES

    from fastapi.testclient import TestClient

    from seg_service.api.app import create_app
    from seg_service.api.settings import Settings

    image_path = folder / "images" / "street-06.jpg"
    with TestClient(create_app(Settings(model_dir=models, default_model="street"))) as client:
        files = {"file": ("street-06.jpg", image_path.read_bytes(), "image/jpeg")}
        reply = client.post("/segment", params={"format": "json"}, files=files)
        assert reply.status_code == 200, reply.text
        assert [c["name"] for c in reply.json()["classes"]] == STREET_CLASSES
        reply = client.post("/segment", files=files)  # format=png: the label mask
        assert reply.status_code == 200
        mask = np.asarray(Image.open(io.BytesIO(reply.content)))
        assert mask.shape == (360, 480) and int(mask.max()) < len(STREET_CLASSES)


@pytest.mark.slow
def test_an_error_during_training_starts_its_own_line(ccp_copy, tmp_path, capsys):
    # The data check off: the bad labels surface while the epoch's progress bar is on screen.
    code = train_seg_main(
        [
            "--config",
            "smoke_seg",
            "--data.root",
            str(ccp_copy),
            "--data.remap",
            "null",
            "--data.check",
            "false",
            "--output.dir",
            str(tmp_path / "runs"),
            "--output.progress",
            "true",
        ]
    )
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: mask ") and "outside the class list" in last
