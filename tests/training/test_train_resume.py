"""A run killed with SIGKILL and resumed with --resume ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import REPO, quiet, run_module, subprocess_env

from seg_training.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"

EPOCHS = 4
# Workers > 0 so that per-sample augmentation seeding is exercised across processes too.
ARGS = [
    "-m",
    "seg_training.cli",
    "train-seg",
    "--config",
    "smoke_seg",
    "--train.epochs",
    str(EPOCHS),
    "--data.workers",
    "1",
    "--loss.dice",
    "0.5",
]


def _epoch_of(path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet (atomic writes mean never half written)
        return 0


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    reference = run_module([*ARGS, *quiet(tmp_path / "ref")], cwd=REPO)
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *ARGS, *quiet(killed_dir)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed_dir / "smoke_seg" / "last.pt"
    try:
        while proc.poll() is None and _epoch_of(last) < 1:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _epoch_of(last)
    assert 1 <= killed_at < EPOCHS
    killed_elapsed = load_checkpoint(last)["elapsed"]

    resumed = run_module([*ARGS, *quiet(killed_dir), "--resume"], cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from epoch {killed_at}" in resumed.stdout

    ref = load_checkpoint(tmp_path / "ref" / "smoke_seg" / "last.pt")
    res = load_checkpoint(last)
    assert res["epoch"] == ref["epoch"] == EPOCHS and res["step"] == ref["step"]
    assert ref["model"].keys() == res["model"].keys()
    for key, value in ref["model"].items():
        torch.testing.assert_close(res["model"][key], value, rtol=0, atol=1e-6, msg=key)
    for key in ("train_loss", "miou"):
        assert [r[key] for r in res["history"]] == [r[key] for r in ref["history"]]
    # "finished in" counts the whole run: the killed part (stored in the checkpoint) and the resumed one.
    summary = json.loads((killed_dir / "smoke_seg" / "summary.json").read_text())
    resumed_training = sum(r["seconds"] for r in res["history"][killed_at:])
    assert summary["seconds"] >= killed_elapsed + resumed_training
    assert res["elapsed"] >= killed_elapsed + resumed_training


def test_run_started_with_one_decay_for_all_weights_resumes_only_with_that_setting(tmp_path):
    """A checkpoint whose optimizer has the old two-group layout (binary weights decayed like the
    rest) stops a resume under the new default with the advice, and resumes with the old setting."""
    legacy = ["--train.weight_decay", "1e-4", "--train.binary_weight_decay", "1e-4"]
    args = [a if a != str(EPOCHS) else "2" for a in ARGS]
    first = run_module([*args, *quiet(tmp_path), *legacy, "--train.epochs", "1"], cwd=REPO)
    assert first.returncode == 0, first.stderr
    last = tmp_path / "smoke_seg" / "last.pt"
    assert len(load_checkpoint(last)["optimizer"]["param_groups"]) == 2

    refused = run_module([*args, *quiet(tmp_path), "--train.binary_weight_decay", "0", "--resume"], cwd=REPO)
    assert refused.returncode != 0
    assert "--train.binary_weight_decay set to its train.weight_decay" in refused.stderr
    assert "Traceback" not in refused.stderr

    resumed = run_module([*args, *quiet(tmp_path), *legacy, "--resume"], cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last)["epoch"] == 2
