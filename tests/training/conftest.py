"""Fixtures for the training pipeline tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TEST_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture()
def ccp_copy(tmp_path: Path) -> Path:
    """A writable copy of the CCP test images and masks (for breaking files on purpose)."""
    dst = tmp_path / "ccp"
    shutil.copytree(TEST_DATA / "ccp", dst)
    return dst


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    """person_mix (each module builds its own) from the test copies of CCP, portraits, CamVid (as
    its train split) and Imagenette (its church photos are people-free scenes)."""
    from seg_training.data.person_mix import build

    shared = tmp_path_factory.mktemp("shared")
    (shared / "ccp").symlink_to(TEST_DATA / "ccp")
    (shared / "portraits").symlink_to(TEST_DATA / "portraits")
    (shared / "imagenette96").symlink_to(TEST_DATA / "imagenette")
    (shared / "camvid").mkdir()
    (shared / "camvid" / "train").symlink_to(TEST_DATA / "camvid")
    for part, suffix in (("images", "jpg"), ("masks", "png")):  # one CamVid frame as its val split
        (shared / "camvid" / "val" / part).mkdir(parents=True)
        (shared / "camvid" / "val" / part / f"val_frame.{suffix}").symlink_to(
            TEST_DATA / "camvid" / part / f"0001TP_006690.{suffix}"
        )
    out = tmp_path_factory.mktemp("person_mix")
    counts = build(shared, out)
    assert counts["train"] == 6 + 2 + len(list((TEST_DATA / "camvid" / "images").iterdir())) + 6
    assert (counts["val_ccp"], counts["val_portraits"], counts["val_camvid"], counts["val_scenes"]) == (
        4,
        2,
        1,
        2,
    )
    assert (out / "val_camvid.txt").read_text().split() == ["camvid_val_frame"]
    return out
