"""Distillation from a teacher's probability maps: the maps, their path through copy-paste and
augmentation, the loss term, the config rules, and a training step that uses them."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("albumentations")

import torch  # noqa: E402
from train_helpers import quiet  # noqa: E402

from seg_training.cli import train_seg_main  # noqa: E402
from seg_training.data import build_seg_dataset, pad_collate, read_mask  # noqa: E402
from seg_training.data.io import IMAGE_EXTENSIONS  # noqa: E402
from seg_training.data.teacher_maps import main as teacher_maps_main  # noqa: E402
from seg_training.data.teacher_maps import write_teacher_maps  # noqa: E402
from seg_training.engine.config import ConfigError, load_config  # noqa: E402
from seg_training.engine.metrics import SegmentationLoss  # noqa: E402

PERSON_CONFIG = Path(__file__).resolve().parents[2] / "seg_training/configs/person.yaml"
MEDIAPIPE = os.environ.get("MEDIAPIPE_PYTHON")
needs_mediapipe = pytest.mark.skipif(
    not (MEDIAPIPE and Path(MEDIAPIPE).is_file()),
    reason="needs MEDIAPIPE_PYTHON, the python of an environment with mediapipe installed",
)


def _labels_as_teacher(mix: Path, folder: str, skip: str) -> Path:
    """Teacher maps that say exactly what the labels say (person 254, background 0, ignore 255), for
    every training image except those whose name starts with ``skip``."""
    out = mix / folder
    out.mkdir(exist_ok=True)
    for name in (mix / "train.txt").read_text().split():
        if not name.startswith(skip):
            labels = read_mask(mix / "masks" / f"{name}.png")
            teacher = np.where(labels == 255, 255, labels.astype(np.int32) * 254).astype(np.uint8)
            cv2.imwrite(str(out / f"{name}.png"), teacher)
    return out


def test_teacher_maps_travel_with_the_labels_through_copy_paste_and_augmentation(mix):
    """Wherever a sample has a teacher value and a label, they still agree after copy-paste (which
    pastes the source's teacher values with its people), scaling, cropping, flips and rotation;
    images without a map have none, except under people pasted from images with one."""
    _labels_as_teacher(mix, "teacher_same", skip="camvid_")
    config = load_config(
        "seg",
        PERSON_CONFIG,
        [("data.root", str(mix)), ("data.teacher_dir", "teacher_same"), ("loss.distill", 1.0)],
    )
    train = build_seg_dataset(config["data"], "train")
    names = (mix / "train.txt").read_text().split()
    valued = 0
    for index, name in enumerate(names):
        for seed in range(3):
            image, labels, teacher = train[(index, 1000 * index + seed)]
            assert image.shape == (3, 224, 224) and labels.shape == teacher.shape == (224, 224)
            assert teacher.dtype == torch.uint8 and labels.dtype == torch.int64
            both = (teacher != 255) & (labels != 255)
            assert torch.equal(teacher[both].long(), labels[both] * 254)
            valued += int(both.sum())
            if name.startswith("camvid_"):
                # no map of its own: teacher values only where people from mapped images were pasted
                assert bool((labels[teacher != 255] == 1).all())
    assert valued > 0
    again = train[(0, 7)]
    assert torch.equal(again[2], train[(0, 7)][2])  # seeded like the image and the labels
    # without data.teacher_dir the items stay (image, labels)
    plain = build_seg_dataset(load_config("seg", PERSON_CONFIG, [("data.root", str(mix))])["data"], "train")
    assert len(plain[(0, 7)]) == 2


def test_pad_collate_pads_teacher_maps_with_no_value():
    a = (
        torch.zeros(3, 40, 50),
        torch.ones(40, 50, dtype=torch.int64),
        torch.full((40, 50), 7, dtype=torch.uint8),
    )
    b = (
        torch.zeros(3, 64, 30),
        torch.zeros(64, 30, dtype=torch.int64),
        torch.full((64, 30), 9, dtype=torch.uint8),
    )
    images, labels, teacher = pad_collate([a, b])
    assert images.shape == (2, 3, 64, 64) and labels.shape == teacher.shape == (2, 64, 64)
    assert teacher.dtype == torch.uint8
    assert int((teacher[0] == 7).sum()) == 40 * 50 and int((teacher[0] == 255).sum()) == 64 * 64 - 40 * 50
    assert int((teacher[1] == 9).sum()) == 64 * 30
    assert len(pad_collate([a[:2], b[:2]])) == 2


def test_distillation_term_is_cross_entropy_against_the_teachers_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 6, 5)
    labels = torch.randint(0, 2, (2, 6, 5))
    labels[0, 0] = 255  # ignored pixels have no distillation either
    teacher = torch.randint(0, 255, (2, 6, 5), dtype=torch.uint8)
    teacher[1, :2] = 255  # no teacher value
    plain = SegmentationLoss(ce=1.0, lovasz=0.5)
    distilled = SegmentationLoss(ce=1.0, lovasz=0.5, distill=0.7)
    valid = (labels != 255) & (teacher != 255)
    p = teacher.double()[valid] / 254.0
    log_probs = torch.log_softmax(logits.double(), dim=1)
    expected = -(p * log_probs[:, 1][valid] + (1 - p) * log_probs[:, 0][valid]).mean()
    assert torch.allclose(distilled.distillation(logits, labels, teacher).double(), expected, atol=1e-6)
    total = distilled(logits, labels, teacher)
    assert torch.allclose(total, plain(logits, labels) + 0.7 * expected.float(), atol=1e-5)
    # without a teacher map, or with weight 0, the loss is the plain one
    assert torch.equal(distilled(logits, labels), plain(logits, labels))
    assert torch.equal(SegmentationLoss(ce=1.0, lovasz=0.5)(logits, labels, teacher), plain(logits, labels))
    none = torch.full_like(teacher, 255)
    assert float(distilled.distillation(logits, labels, none)) == 0.0
    with pytest.raises(ValueError, match="two-class"):
        distilled.distillation(
            torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64), teacher[:1, :4, :4]
        )
    with pytest.raises(ValueError, match="distill"):
        SegmentationLoss(distill=-1.0)


def test_config_asks_for_teacher_maps_and_two_classes(mix):
    with pytest.raises(ConfigError, match="teacher_dir"):
        load_config("seg", PERSON_CONFIG, [("data.root", str(mix)), ("loss.distill", 1.0)])
    with pytest.raises(ConfigError, match="loss.distill must be"):
        load_config("seg", PERSON_CONFIG, [("data.teacher_dir", "t"), ("loss.distill", -0.5)])
    with pytest.raises(ConfigError, match="two classes"):
        load_config(
            "seg",
            PERSON_CONFIG,
            [
                ("data.classes", "a,b,c"),
                ("data.teacher_dir", "t"),
                ("loss.distill", 1.0),
                ("data.palette", None),
            ],
        )
    config = load_config("seg", PERSON_CONFIG, [("data.root", str(mix)), ("data.teacher_dir", "absent")])
    with pytest.raises(Exception, match="teacher_maps"):
        build_seg_dataset(config["data"], "train")


@pytest.mark.slow
def test_a_training_step_adds_the_distillation_term(tmp_path):
    """One step of the smoke recipe, with and without distillation against maps of a constant, unsure
    teacher (probability 0.85 on people, 0.1 elsewhere): the first step's loss, computed before any
    update on the same batch, grows by at least the teacher's entropy (cross-entropy = entropy + KL)."""
    data = tmp_path / "ccp"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "ccp", data)
    (data / "teacher").mkdir()
    for image in (data / "images").iterdir():
        if image.suffix.lower() in IMAGE_EXTENSIONS:
            person = read_mask(data / "masks" / f"{image.stem}.png") > 0
            cv2.imwrite(
                str(data / "teacher" / f"{image.stem}.png"), np.where(person, 216, 25).astype(np.uint8)
            )

    def first_loss(name: str, extra: list[str]) -> float:
        args = ["--config", "smoke_seg", "--data.root", str(data), "--train.epochs", "1"]
        args += ["--train.steps_per_epoch", "1", "--output.name", name, *quiet(tmp_path), *extra]
        assert train_seg_main(args) == 0
        with open(tmp_path / name / "log.csv") as f:
            return float(next(csv.DictReader(f))["train_loss"])

    plain = first_loss("plain", [])
    distilled = first_loss("distilled", ["--data.teacher_dir", "teacher", "--loss.distill", "1.0"])

    def entropy(q: float) -> float:
        return float(-(q * np.log(q) + (1 - q) * np.log(1 - q)))

    assert distilled - plain >= min(entropy(216 / 254), entropy(25 / 254)) - 1e-4


@needs_mediapipe
def test_teacher_maps_are_mediapipes_confidence_for_labelled_people(mix, tmp_path):
    """MediaPipe's maps for the mix's CCP and portrait training photos: 0-254, people high where the
    hand-drawn labels say person; scenes and CamVid frames get none (their labels train alone)."""
    count = write_teacher_maps(mix, "train.txt", str(MEDIAPIPE), out="teacher_mp")
    names = (mix / "train.txt").read_text().split()
    mapped = sorted(p.stem for p in (mix / "teacher_mp").iterdir())
    assert mapped == sorted(n for n in names if n.startswith(("ccp_", "portraits_")))
    assert count == len(mapped) > 0
    for name in mapped:
        teacher = read_mask(mix / "teacher_mp" / f"{name}.png")
        labels = read_mask(mix / "masks" / f"{name}.png")
        assert teacher.shape == labels.shape and teacher.max() <= 254
        person, background = teacher[labels == 1] >= 127, teacher[labels == 0] >= 127
        assert person.mean() > 0.8 and background.mean() < 0.2, name
    # the command line: a missing MediaPipe python is a one-line error
    with pytest.raises(SystemExit):
        teacher_maps_main(["--root", str(mix), "--mediapipe-python", str(tmp_path / "nope")])
