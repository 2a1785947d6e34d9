"""Online hard example mining for the cross-entropy (``loss.ohem_thresh``, ``loss.ohem_min_kept``):
only the labelled pixels the network is unsure of count, with a floor on how many. Checked against
torch's own per-pixel cross-entropy, picked by hand; one short training run on real CamVid frames."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import REPO, TEST_DATA, quiet

from seg_training.cli import train_seg_main
from seg_training.engine.config import ConfigError, load_config
from seg_training.engine.metrics import SegmentationLoss
from seg_training.engine.trainer import build_criterion

WEIGHTS = [0.5, 2.0, 1.0, 4.0]


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 12, 12) * 2
    target = torch.randint(0, 4, (2, 12, 12))
    target[0, :2] = 255
    return logits, target


def true_class_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    safe = torch.where(target == 255, torch.zeros_like(target), target)
    return F.softmax(logits, 1).gather(1, safe[:, None])[:, 0]


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_threshold_one_keeps_every_pixel_and_equals_the_plain_loss(weights):
    logits, target = scene()
    plain = SegmentationLoss(ce=1.0, class_weights=weights)(logits, target)
    mined = SegmentationLoss(ce=1.0, class_weights=weights, ohem_thresh=1.0)(logits, target)
    assert torch.allclose(plain, mined, atol=1e-6)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_only_pixels_below_the_threshold_count_and_take_the_gradient(weights):
    logits, target = scene()
    logits.requires_grad_(True)
    loss = SegmentationLoss(ce=1.0, class_weights=weights, ohem_thresh=0.5, ohem_min_kept=0.0)(logits, target)
    loss.backward()

    p = true_class_probability(logits.detach(), target)
    labelled = target != 255
    hard = labelled & (p <= 0.5)
    assert 0 < int(hard.sum()) < int(labelled.sum())  # the scene has both kinds
    per_pixel = F.cross_entropy(
        logits.detach(),
        target,
        weight=None if weights is None else torch.tensor(WEIGHTS),
        ignore_index=255,
        reduction="none",
    )
    pixel_weight = torch.ones_like(p) if weights is None else torch.tensor(WEIGHTS)[target.clamp(max=3)]
    expected = per_pixel[hard].sum() / pixel_weight[hard].sum()
    assert torch.allclose(loss, expected, atol=1e-6)
    # easy and ignored pixels get no gradient, every hard one does
    grad = logits.grad.abs().sum(1)
    assert torch.all(grad[~hard] == 0)
    assert torch.all(grad[hard] > 0)


def test_the_floor_keeps_the_least_certain_pixels_when_few_are_hard():
    logits, target = scene()
    labelled = int((target != 255).sum())
    # a threshold almost nothing is under: the floor of a quarter of the pixels decides
    loss = SegmentationLoss(ce=1.0, ohem_thresh=1e-6, ohem_min_kept=0.25)(logits, target)
    p = true_class_probability(logits, target)[target != 255]
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    least_certain = p.argsort()[: round(0.25 * labelled)]
    assert torch.allclose(loss, per_pixel[least_certain].mean(), atol=1e-6)
    # ... which are the pixels of highest loss, so the mined loss is above the plain one
    assert loss > F.cross_entropy(logits, target, ignore_index=255)


def test_a_batch_with_no_labelled_pixel_gives_zero():
    logits, target = scene()
    target[:] = 255
    loss = SegmentationLoss(ce=1.0, ohem_thresh=0.7)(logits, target)
    assert float(loss) == 0.0


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("loss.ohem_thresh", 0, "loss.ohem_thresh must be null or a number in"),
        ("loss.ohem_thresh", 1.5, "loss.ohem_thresh must be null or a number in"),
        ("loss.ohem_thresh", "hard", "loss.ohem_thresh must be null or a number in"),
        ("loss.ohem_min_kept", -0.1, "loss.ohem_min_kept must be a fraction"),
        ("loss.ohem_min_kept", 2, "loss.ohem_min_kept must be a fraction"),
    ],
)
def test_bad_values_are_one_line_config_errors(key, bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config("seg", REPO / "seg_training/configs/smoke_seg.yaml", [(key, bad)])


def test_the_config_reaches_the_loss_and_a_training_run_uses_it(tmp_path):
    config = load_config(
        "seg",
        REPO / "seg_training/configs/smoke_seg.yaml",
        [("loss.ohem_thresh", 0.7), ("loss.ohem_min_kept", 0.125)],
    )
    criterion = build_criterion(config)
    assert isinstance(criterion, SegmentationLoss)
    assert (criterion.ohem_thresh, criterion.ohem_min_kept) == (0.7, 0.125)
    plain = build_criterion(load_config("seg", REPO / "seg_training/configs/smoke_seg.yaml", []))
    assert isinstance(plain, SegmentationLoss) and plain.ohem_thresh is None

    camvid = TEST_DATA / "camvid"
    code = train_seg_main(
        [
            "--config",
            "smoke_seg",
            "--data.layout=folder",
            f"--data.root={camvid}",
            "--data.train_split=all",
            "--data.val_split=all",
            "--data.classes",
            "sky,building,pole,road,pavement,tree,signsymbol,fence,car,pedestrian,bicyclist",
            "--data.remap",
            "null",
            "--data.void_labels",
            "[11]",
            "--train.epochs",
            "1",
            "--loss.ohem_thresh",
            "0.7",
            *quiet(tmp_path),
        ]
    )
    assert code == 0
