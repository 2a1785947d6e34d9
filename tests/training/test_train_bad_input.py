"""Each kind of bad input ends with one line `error: ...` naming the file or key, exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from train_helpers import REPO, TEST_DATA, quiet, subprocess_env

from seg_training.cli import train_cls_main, train_seg_main


def run_seg(argv, tmp_path, capsys):
    rc = train_seg_main([*argv, *quiet(tmp_path / "runs")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return rc, lines


def smoke_on(root) -> list[str]:
    return ["--config", "smoke_seg", "--data.root", str(root), "--train.epochs", "1"]


def assert_one_error(rc, lines, *needles):
    assert rc == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def test_missing_mask(ccp_copy, tmp_path, capsys):
    (ccp_copy / "masks" / "0003.png").unlink()
    rc, lines = run_seg(smoke_on(ccp_copy), tmp_path, capsys)
    assert_one_error(rc, lines, "missing mask", ccp_copy / "images" / "0003.jpg")


def test_image_mask_size_mismatch(ccp_copy, tmp_path, capsys):
    mask_path = ccp_copy / "masks" / "0002.png"
    Image.open(mask_path).resize((100, 150), Image.NEAREST).save(mask_path)
    rc, lines = run_seg(smoke_on(ccp_copy), tmp_path, capsys)
    assert_one_error(rc, lines, "size mismatch", ccp_copy / "images" / "0002.jpg", mask_path, "100x150")


def test_label_outside_class_list(ccp_copy, tmp_path, capsys):
    # Without the binary remap, CCP's 59 clothing labels are not in a 2-class list.
    rc, lines = run_seg([*smoke_on(ccp_copy), "--data.remap", "null"], tmp_path, capsys)
    assert_one_error(rc, lines, "outside the class list", ccp_copy / "masks")


def test_camvid_void_needs_void_labels(tmp_path, capsys):
    classes = "[sky, building, pole, road, pavement, tree, signsymbol, fence, car, pedestrian, bicyclist]"
    argv = [
        "--config",
        "smoke_seg",
        "--data.root",
        str(TEST_DATA / "camvid"),
        "--data.remap",
        "null",
        "--data.classes",
        classes,
        "--data.train_split",
        "all",
        "--data.val_split",
        "all",
        "--train.epochs",
        "1",
    ]
    rc, lines = run_seg(argv, tmp_path, capsys)
    assert_one_error(rc, lines, "label value(s) 11", TEST_DATA / "camvid" / "masks")


def test_empty_data_set(ccp_copy, tmp_path, capsys):
    rc, lines = run_seg([*smoke_on(ccp_copy), "--data.train_split", "2000-2100"], tmp_path, capsys)
    assert_one_error(rc, lines, "empty data set", ccp_copy)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image(ccp_copy, tmp_path, capsys, workers):
    """Also through a DataLoader worker, which re-raises with the worker's traceback appended."""
    bad = ccp_copy / "images" / "0004.jpg"
    bad.write_bytes(b"this is not a JPEG file" * 10)
    rc, lines = run_seg([*smoke_on(ccp_copy), "--data.workers", str(workers)], tmp_path, capsys)
    assert_one_error(rc, lines, "unreadable image", bad)


def test_rgb_mask_is_rejected(ccp_copy, tmp_path, capsys):
    mask_path = ccp_copy / "masks" / "0001.png"
    mask = np.asarray(Image.open(mask_path))
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(mask_path)
    rc, lines = run_seg(smoke_on(ccp_copy), tmp_path, capsys)
    assert_one_error(rc, lines, mask_path, "expected 8-bit label indices")


# Three bad runs in one process, as a notebook or a test session makes them: each must end with its
# error, its DataLoader workers stopped and no tqdm monitor thread left (see seg_training/engine/progress.py).
REPEATED_RUNS = """
import multiprocessing, sys, threading
from seg_training.cli import train_seg_main
for attempt in range(3):
    rc = train_seg_main(sys.argv[1:])
    workers = len(multiprocessing.active_children())
    monitors = sum(t.name == "tqdm_monitor" and t.is_alive() for t in threading.enumerate())
    print(f"attempt {attempt}: rc={rc} workers={workers} monitors={monitors}", flush=True)
"""


@pytest.mark.slow
def test_bad_mask_in_workers_with_progress_bars_ends_with_its_error(ccp_copy, tmp_path):
    """Issue 15: such a run hung in tqdm.write on tqdm's lock. With workers and progress bars on and the
    data check off (so a worker meets the RGB mask), every run ends with the one-line error on a line
    of its own, with no worker and no tqdm thread left behind; the timeout is only a hang guard."""
    mask_path = ccp_copy / "masks" / "0001.png"
    mask = np.asarray(Image.open(mask_path))
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(mask_path)
    argv = [
        *smoke_on(ccp_copy),
        "--data.workers",
        "2",
        "--data.check",
        "false",
        "--output.dir",
        str(tmp_path / "runs"),
        "--output.progress",
        "true",
    ]
    done = subprocess.run(
        [sys.executable, "-c", REPEATED_RUNS, *argv],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("rc=2 workers=0 monitors=0") == 3, done.stdout + done.stderr[-3000:]
    assert "epoch 1/1" in done.stderr  # the bars were drawn
    # An error never shares a line with a bar: each starts a line (bars redraw with \r).
    errors = [line for line in re.split(r"[\r\n]", done.stderr) if "error: " in line]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), errors
    assert done.stderr.count("\nerror: ") == 3, done.stderr[-3000:]
    assert all(str(mask_path) in line and "expected 8-bit label indices" in line for line in errors)


def test_misspelled_key_on_command_line(tmp_path, capsys):
    rc, lines = run_seg(["--config", "smoke_seg", "--train.epoch", "3"], tmp_path, capsys)
    assert_one_error(rc, lines, "'train.epoch'", "did you mean 'train.epochs'")


def test_misspelled_key_in_config_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "base: "
        + str(TEST_DATA.parents[1] / "seg_training/configs/smoke_seg.yaml")
        + "\ndata:\n  crop_szie: 64\n"
    )
    rc, lines = run_seg(["--config", str(config)], tmp_path, capsys)
    assert_one_error(rc, lines, "'data.crop_szie'", str(config), "did you mean 'data.crop_size'")


def test_misspelled_model_key(tmp_path, capsys):
    rc, lines = run_seg(["--config", "smoke_seg", "--set", "model.hed=fcn"], tmp_path, capsys)
    assert_one_error(rc, lines, "'model.hed'", "did you mean 'model.head'")


def test_bad_model_value(tmp_path, capsys):
    rc, lines = run_seg(["--config", "smoke_seg", "--model.head", "unet"], tmp_path, capsys)
    assert_one_error(rc, lines, "model.head")


def test_missing_data_root_for_classification(tmp_path, capsys):
    rc = train_cls_main(["--config", "smoke_cls", "--data.root", str(tmp_path / "nowhere"), *quiet(tmp_path)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert_one_error(rc, lines, "image folder not found", tmp_path / "nowhere")


def test_missing_checkpoint_for_eval(tmp_path, capsys):
    rc = train_seg_main(["eval", "--checkpoint", str(tmp_path / "none.pt")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert_one_error(rc, lines, "checkpoint not found", tmp_path / "none.pt")


def test_checkpoint_with_code_is_refused(tmp_path, capsys):
    """A pickle that would run code is refused by weights_only loading; the error names the file."""
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"format": "groupnet-training-checkpoint", "payload": _Evil()}, path)
    rc = train_seg_main(["eval", "--checkpoint", str(path)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert_one_error(rc, lines, "cannot read checkpoint", path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))
