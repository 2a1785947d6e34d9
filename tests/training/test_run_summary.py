"""The report printed when a training run ends."""

from __future__ import annotations

import pytest

from seg_training.engine.trainer import format_summary


def _finished_run_summary(tmp_path, best_epoch: int, epochs: int) -> dict:
    return {
        "task": "seg",
        "output_dir": str(tmp_path),
        "epochs": epochs,
        "steps": 30,
        "world_size": 1,
        "device": "cpu",
        "seconds": 60.0,
        "metric": "miou",
        "best_metric": 0.7,
        "best_epoch": best_epoch,
        "final": None,
        "train_images": 100,
        "val_images": 20,
        "parameters": 1_000_000,
    }


@pytest.mark.parametrize(("best_epoch", "warned"), [(2, True), (3, False)])
def test_run_summary_warns_when_best_checkpoint_is_not_the_last_epoch(tmp_path, best_epoch, warned):
    """A person run's 100-image split picked epoch 4 of 6, 9 CCP points below its last checkpoint."""
    history = [{"images": 100, "seconds": 20.0}] * 3
    model_cfg = {"arch": "lraspp_mobilenet_v3_large", "num_classes": 2}
    text = format_summary(_finished_run_summary(tmp_path, best_epoch, 3), model_cfg, history, None)
    note = [line for line in text.splitlines() if line.startswith("note ")]
    if warned:
        assert note == [
            "note    best.pt is epoch 2 of 3: on a validation split of 20 images that can be noise; "
            "score best.pt and last.pt on a larger held-out set before exporting one"
        ]
    else:
        assert note == []
    assert f"best    mIoU 70.00 at epoch {best_epoch}" in text
