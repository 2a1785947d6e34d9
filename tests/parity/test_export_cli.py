"""export-model: a training checkpoint becomes a packed file with the checkpoint's metadata."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")

from seg_service.runtime import load_model  # noqa: E402
from seg_training.engine.checkpoint import FORMAT, VERSION  # noqa: E402
from seg_training.export import main  # noqa: E402

from .helpers import SMALL, assert_parity, load_rgb, normalise, small_model, torch_logits  # noqa: E402


def write_checkpoint(path, model, **extra):
    state = {
        "format": FORMAT,
        "version": VERSION,
        "task": "seg",
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        **extra,
    }
    torch.save(state, path)


def test_checkpoint_to_packed_model(tmp_path, capsys):
    model = small_model(seed=4, k=2, output_stride=16, head="fcn")
    classes = ["background", "person", "car", "tree", "sky"]
    write_checkpoint(
        tmp_path / "ckpt.pt", model, classes=classes, palette=[[i, 2 * i, 3 * i] for i in range(5)]
    )
    out = tmp_path / "m.gnpk"
    assert main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(out), "--name", "street"]) == 0
    assert "wrote" in capsys.readouterr().out
    runtime = load_model(out)
    assert runtime.name == "street" and runtime.classes == classes
    np.testing.assert_array_equal(runtime.palette[2], [2, 4, 6])
    assert runtime.input_spec["mean"] == [0.5, 0.5, 0.5] and runtime.input_spec["std"] == [0.25, 0.25, 0.25]
    assert runtime.arch == "groupnet_resnet18" and runtime.config["k"] == 2
    x = normalise(load_rgb("camvid/images/0001TP_006690.jpg", (64, 96)))
    assert_parity(runtime.forward(x), torch_logits(model, x), what="from checkpoint")


def test_overrides_and_errors(tmp_path, capsys):
    model = small_model(seed=4, k=1, output_stride=32, head="fcn", num_classes=2)
    write_checkpoint(tmp_path / "ckpt.pt", model, classes=["a", "b"], palette=None)
    out = tmp_path / "m.gnpk"
    argv = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(out)]
    assert main(argv + ["--classes", "background,person", "--palette", "0,0,0;220,20,60"]) == 0
    runtime = load_model(out)
    assert runtime.classes == ["background", "person"] and runtime.palette.tolist() == [
        [0, 0, 0],
        [220, 20, 60],
    ]
    assert runtime.name.startswith("groupnet_resnet18_k1")

    assert main(argv + ["--classes", "a,b,c"]) == 2
    assert "3 class names given but the model predicts 2 classes" in capsys.readouterr().err
    # One name without a comma is a file of names (train-seg's data.classes rule); none here.
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--classes", "only-one"])
    assert exit_info.value.code == 2 and "--classes 'only-one': no such file" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "task": "seg",
            "model": model.state_dict(),
            "model_config": {**SMALL, "num_classes": 2, "k": 3},
        },
        tmp_path / "bad.pt",
    )
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--out", str(out)]) == 2
    assert "does not match the model config" in capsys.readouterr().err


def test_repack_changes_only_the_description(tmp_path, capsys):
    model = small_model(seed=5, k=2, output_stride=16, head="fcn", num_classes=2)
    write_checkpoint(tmp_path / "ckpt.pt", model, classes=["background", "person"], palette=None)
    first = tmp_path / "first.gnpk"
    assert main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(first), "--max-side", "64"]) == 0
    second = tmp_path / "second.gnpk"
    assert main(["--repack", str(first), "--out", str(second), "--max-side", "96", "--name", "people"]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b = load_model(first), load_model(second)
    assert (a.max_side, b.max_side) == (64, 96) and b.name == "people" and b.classes == a.classes
    assert a.checksum != b.checksum  # the description is covered by the checksum
    rgb = load_rgb("camvid/images/0001TP_006690.jpg", (72, 96))
    np.testing.assert_array_equal(
        a.forward(normalise(rgb)), b.forward(normalise(rgb))
    )  # same weights, same graph
    assert b.predict(rgb).shape == (72, 96)
    assert main(["--repack", str(first), "--out", str(second), "--classes", "a,b,c"]) == 2
    assert "3 class names given but the model predicts 2" in capsys.readouterr().err
    assert main(["--repack", str(tmp_path / "missing.gnpk"), "--out", str(second)]) == 2
    assert "missing.gnpk" in capsys.readouterr().err
