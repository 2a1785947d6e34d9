"""Two-stage recipe (tanh stage 1 -> sign stage 2) and classification -> segmentation initialisation."""

from __future__ import annotations

import pytest
import torch
from train_helpers import quiet

from seg_training.binary import get_mode
from seg_training.cli import train_cls_main, train_seg_main
from seg_training.data.errors import InputError
from seg_training.engine.checkpoint import init_weights, load_checkpoint
from seg_training.engine.config import load_config, model_config_for
from seg_training.models import create_model


def seg_model(config_name: str, *overrides: tuple[str, object]):
    config = load_config("seg", f"seg_training/configs/{config_name}.yaml", list(overrides))
    return create_model(model_config_for(config, len(config["data"]["classes"])))


@pytest.mark.slow
def test_two_stage_recipe_loads_stage1_into_stage2(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert (
        train_seg_main(
            [
                "--config",
                "smoke_seg",
                "--model.mode",
                "tanh",
                "--train.epochs",
                "1",
                "--output.name",
                "stage1",
                *quiet(runs),
            ]
        )
        == 0
    )
    stage1 = runs / "stage1" / "last.pt"
    assert load_checkpoint(stage1)["model_config"]["mode"] == "tanh"

    # The weights a stage-2 model starts from are exactly stage 1's, and it runs binary (sign).
    model = seg_model("smoke_seg", ("model.mode", "sign"))
    message = init_weights(model, stage1, task="seg", scope="auto")
    assert "(all)" in message
    stage1_weights = load_checkpoint(stage1)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, stage1_weights[key]), key
    assert get_mode(model) == "sign"

    # And through the CLI: stage 2 with init_from trains on from stage 1.
    capsys.readouterr()
    assert (
        train_seg_main(
            [
                "--config",
                "smoke_seg",
                "--model.mode",
                "sign",
                "--train.epochs",
                "1",
                "--train.init_from",
                str(stage1),
                "--output.name",
                "stage2",
                *quiet(runs),
            ]
        )
        == 0
    )
    assert f"from {stage1}" in capsys.readouterr().out
    stage2 = load_checkpoint(runs / "stage2" / "last.pt")
    assert stage2["model_config"]["mode"] == "sign"
    changed = [
        k
        for k, v in stage2["model"].items()
        if v.dtype.is_floating_point and not torch.equal(v, stage1_weights[k])
    ]
    assert changed, "stage 2 did not train"


@pytest.mark.slow
def test_classification_checkpoint_initialises_segmentation_encoder(tmp_path):
    runs = tmp_path / "runs"
    assert train_cls_main(["--config", "smoke_cls", "--train.epochs", "1", *quiet(runs)]) == 0
    cls_ckpt = runs / "smoke_cls" / "last.pt"
    cls_weights = load_checkpoint(cls_ckpt)["model"]

    torch.manual_seed(123)
    model = seg_model("smoke_seg")
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    message = init_weights(model, cls_ckpt, task="seg", scope="auto")
    assert "(encoder)" in message
    state = model.state_dict()
    encoder_keys = [k for k in state if k.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        assert torch.equal(state[key], cls_weights[key]), key
    for key, value in head_before.items():  # the head keeps its own initialisation
        assert torch.equal(state[key], value), key


def test_init_from_mismatched_model_is_a_clear_error(tmp_path):
    runs = tmp_path / "runs"
    assert train_cls_main(["--config", "smoke_cls", "--train.epochs", "1", *quiet(runs)]) == 0
    wider = seg_model("smoke_seg", ("model.width", 0.5))
    try:
        init_weights(wider, runs / "smoke_cls" / "last.pt", task="seg")
    except Exception as exc:  # noqa: BLE001
        assert "has shape" in str(exc) and "model.width" in str(exc)
    else:
        raise AssertionError("loading a narrower encoder into a wider model did not fail")


def test_encoder_head_scope_keeps_the_decoder_fresh(tmp_path):
    """A wider skip decoder on a trained encoder and head: ``encoder_head`` loads those two exactly,
    leaves the decoder at its own initialisation, and ``all`` refuses the resized decoder."""
    from seg_training.engine.checkpoint import FORMAT, VERSION, save_atomic

    decoder = (("model.output_stride", 32), ("model.aspp_rates", [1, 2, 3]), ("model.decoder", "skip"))
    torch.manual_seed(0)
    trained = seg_model("smoke_seg", *decoder, ("model.skip_channels", 8))
    path = tmp_path / "trained.pt"
    save_atomic({"format": FORMAT, "version": VERSION, "task": "seg", "model": trained.state_dict()}, path)

    torch.manual_seed(1)
    wider = seg_model("smoke_seg", *decoder, ("model.skip_channels", 24))
    decoder_before = {k: v.clone() for k, v in wider.state_dict().items() if k.startswith("decoder.")}
    assert decoder_before
    message = init_weights(wider, path, task="seg", scope="encoder_head")
    assert "(encoder_head)" in message
    state, source = wider.state_dict(), trained.state_dict()
    loaded = [k for k in state if k.startswith(("encoder.", "head."))]
    assert loaded and len(loaded) + len(decoder_before) == len(state)
    for key in loaded:
        assert torch.equal(state[key], source[key]), key
    for key, value in decoder_before.items():
        assert torch.equal(state[key], value), key

    resized = seg_model("smoke_seg", *decoder, ("model.skip_channels", 24))
    with pytest.raises(Exception, match="decoder.project"):
        init_weights(resized, path, task="seg", scope="all")


def test_extend_scope_adds_the_stem_stage_without_changing_the_network(tmp_path):
    """``extend`` loads every weight of a trained skip-decoder network into the same network with a
    stem stage (model.stem_skip_channels); the stage starts at zero, so the grown network predicts
    exactly what the trained one did. A checkpoint with weights the model lacks is refused."""
    from seg_training.engine.checkpoint import FORMAT, VERSION, save_atomic

    decoder = (("model.output_stride", 32), ("model.aspp_rates", [1, 2, 3]), ("model.decoder", "skip"))
    torch.manual_seed(0)
    trained = seg_model("smoke_seg", *decoder).eval()
    path = tmp_path / "trained.pt"
    save_atomic({"format": FORMAT, "version": VERSION, "task": "seg", "model": trained.state_dict()}, path)

    torch.manual_seed(1)
    grown = seg_model("smoke_seg", *decoder, ("model.stem_skip_channels", 8))
    stage = [k for k in grown.state_dict() if k.startswith("decoder.stem_refine.")]
    assert stage
    message = init_weights(grown, path, task="seg", scope="extend")
    assert "(extend)" in message and f"{len(stage)} start fresh" in message
    with pytest.raises(Exception, match="decoder.stem_refine"):
        init_weights(seg_model("smoke_seg", *decoder, ("model.stem_skip_channels", 8)), path, "seg", "all")

    grown.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got, want = grown(x), trained(x)
    assert float((got - want).abs().max()) < 0.1 * float(want.abs().max())
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) > 0.97

    path_grown = tmp_path / "grown.pt"
    save_atomic(
        {"format": FORMAT, "version": VERSION, "task": "seg", "model": grown.state_dict()}, path_grown
    )
    with pytest.raises(Exception, match="only adds"):
        init_weights(seg_model("smoke_seg", *decoder), path_grown, task="seg", scope="extend")


@pytest.mark.parametrize(
    "overrides",
    [
        (("model.stem_skip_channels", 8),),  # no skip decoder to refine
        (("model.decoder", "skip"), ("model.stem", "conv7_s4"), ("model.stem_skip_channels", 8)),
        (("model.decoder", "skip"), ("model.stem_skip_channels", -1)),
    ],
)
def test_stem_stage_settings_are_checked(overrides):
    with pytest.raises(InputError, match="stem_skip_channels"):
        seg_model("smoke_seg", *overrides)
