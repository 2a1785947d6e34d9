"""Two CPU processes under torchrun (gloo): both ranks step, only rank 0 writes checkpoints and logs."""

from __future__ import annotations

import json

import pytest
from train_helpers import REPO, quiet, run_module

from seg_training.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "runs"
    result = run_module(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "seg_training.cli",
            "train-seg",
            "--config",
            "smoke_seg",
            "--train.epochs",
            "2",
            *quiet(out),
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = out / "smoke_seg"
    # Rank 0 alone writes, and alone reports: one summary, one line per epoch.
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "config.yaml",
        "defaults.yaml",
        "last.pt",
        "log.csv",
        "summary.json",
    ]
    assert result.stdout.count("no problems found") == 1  # the data check ran on rank 0 alone
    assert result.stdout.count("run finished") == 1
    assert result.stdout.count("epoch 2/2") == 1

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 6 training images over 2 ranks, batch 2 per rank: 1 step per rank per epoch, on both ranks.
    assert summary["steps_per_rank"] == [2, 2]
    ckpt = load_checkpoint(run / "last.pt")
    assert len(ckpt["rng"]) == 2  # per-rank RNG states gathered for resuming
    assert [row["images"] for row in ckpt["history"]] == [4, 4]  # images summed over both ranks
    assert not any(k.startswith("module.") for k in ckpt["model"])  # DDP wrapper not in the keys
