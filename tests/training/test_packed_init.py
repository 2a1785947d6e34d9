"""Warm start from a packed model: the rebuilt encoder (or whole network) computes the packed function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_service import format as gnpk  # noqa: E402
from seg_service.runtime import load_model  # noqa: E402
from seg_training.engine.checkpoint import init_weights  # noqa: E402
from seg_training.engine.packed_init import (  # noqa: E402
    calibrate,
    encoder_checkpoint,
    load_packed_encoder,
    load_packed_head,
    packed_checkpoint,
    sign_weights,
)
from seg_training.export import export_model, weight_sign_bits  # noqa: E402
from seg_training.models import create_model  # noqa: E402
from tests.parity.helpers import assert_parity, load_rgb, normalise, small_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def _images() -> torch.Tensor:
    x = [normalise(load_rgb(p, (96, 128))) for p in ("ccp/images/0003.jpg", "camvid/images/0016E5_01470.jpg")]
    return torch.from_numpy(np.stack(x).transpose(0, 3, 1, 2).copy())


def test_unpack_inverts_pack():
    w = torch.randn(5, 70, 3, 3)
    signs = sign_weights(weight_sign_bits(w), 70)
    assert np.array_equal(signs, torch.where(w < 0, -1.0, 1.0).numpy())


@pytest.mark.parametrize(
    "config", [dict(k=3, output_stride=8, head="aspp"), dict(k=2, output_stride=32, head="fcn")]
)
def test_rebuilt_encoder_matches_the_original(config, tmp_path):
    original = small_model(seed=4, **config)
    export_model(original, tmp_path / "m.gnpk")
    packed = gnpk.read_model(tmp_path / "m.gnpk")
    rebuilt = create_model(dict(packed.model["config"]))
    folded = load_packed_encoder(rebuilt, packed)
    x = _images()
    rebuilt.eval()
    with torch.no_grad():
        want = original.encoder(x)
        for got, ref in zip(rebuilt.encoder(x), want, strict=True):
            assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        # Calibration moves the BatchNorm statistics onto real data and keeps the eval function;
        # in training mode on the same images the encoder then computes (nearly) the same.
        calibrate(rebuilt, folded, x)
        after = rebuilt.encoder(x)
        rebuilt.train()
        in_training = rebuilt.encoder(x)
    for got, train_got, ref in zip(after, in_training, want, strict=True):
        scale = float(ref.abs().max())
        # a binarised activation within rounding of zero may flip: compare almost all values
        assert (torch.abs(got - ref) <= 1e-3 * scale).float().mean() > 0.99
        assert (torch.abs(train_got - ref) <= 1e-2 * scale).float().mean() > 0.95


def test_checkpoint_initialises_another_architecture(tmp_path):
    """The shipped use: a K=3 stride-8 file starts a K=2 stride-32 model with a skip decoder."""
    export_model(small_model(seed=5, k=3, output_stride=8, head="aspp"), tmp_path / "m.gnpk")
    ckpt = encoder_checkpoint(tmp_path / "m.gnpk", DATA / "ccp" / "images", count=4, size=64, branches=2)
    torch.save(ckpt, tmp_path / "enc.pt")
    cfg = dict(gnpk.read_model(tmp_path / "m.gnpk").model["config"])
    cfg.update(k=2, output_stride=32, head="fcn", decoder="skip", bpac_rates=None)
    for stem in ("conv7_pool", "conv7_s4"):  # the stride-4 stem takes the same 7x7 weights
        model = create_model({**cfg, "stem": stem})
        message = init_weights(model, tmp_path / "enc.pt", "seg")
        assert "encoder" in message
        for key, value in ckpt["model"].items():
            assert torch.equal(model.state_dict()[key], value)
    with pytest.raises(Exception, match="branches"):
        encoder_checkpoint(tmp_path / "m.gnpk", DATA / "ccp" / "images", branches=4)


@pytest.mark.parametrize(
    "config",
    [
        dict(k=2, output_stride=32, head="aspp", decoder="skip"),  # the shipped person network's kind
        dict(k=2, output_stride=32, head="aspp", decoder="skip", stem_skip_channels=8),  # + the stem stage
        dict(k=2, stage_k=(1, 2, 2, 2), output_stride=32, head="aspp", decoder="skip"),  # branches per stage
        dict(k=3, output_stride=8, head="aspp"),
        dict(k=2, output_stride=16, head="fcn"),
        dict(k=2, output_stride=8, head="psp"),
    ],
)
def test_whole_network_from_a_packed_file(config, tmp_path):
    """--scope all: encoder, head, decoder and classifier rebuilt compute the file's logits, in
    PyTorch eval mode, before and after the BatchNorm calibration; the checkpoint loads with
    --train.init_scope all."""
    original = small_model(seed=6, **config)
    original.eval()
    export_model(original, tmp_path / "m.gnpk")
    packed = gnpk.read_model(tmp_path / "m.gnpk")
    rebuilt = create_model(dict(packed.model["config"]))
    folded = load_packed_encoder(rebuilt, packed) + load_packed_head(rebuilt, packed)
    x = _images()
    runtime = load_model(tmp_path / "m.gnpk")
    with torch.no_grad():
        want = original(x)
        rebuilt.eval()
        exact = rebuilt(x)
        calibrate(rebuilt, folded, x)
        after = rebuilt(x)
    for got in (exact, after):
        for i in range(len(x)):
            ref = want[i].permute(1, 2, 0).numpy()
            assert_parity(got[i].permute(1, 2, 0).numpy(), ref, rel_tol=1e-3, what="rebuilt vs original")
            image = np.ascontiguousarray(x[i].permute(1, 2, 0).numpy())
            assert_parity(got[i].permute(1, 2, 0).numpy(), runtime.forward(image), rel_tol=1e-3)

    ckpt = packed_checkpoint(tmp_path / "m.gnpk", DATA / "ccp" / "images", count=4, size=64, scope="all")
    assert ckpt["task"] == "seg"
    torch.save(ckpt, tmp_path / "all.pt")
    model = create_model(dict(packed.model["config"]))
    assert "(all)" in init_weights(model, tmp_path / "all.pt", "seg", "all")
    model.eval()
    with torch.no_grad():
        for i, got in enumerate(model(x)):
            assert_parity(got.permute(1, 2, 0).numpy(), want[i].permute(1, 2, 0).numpy(), rel_tol=1e-3)


def test_fewer_branches_from_a_file_with_branches_per_stage(tmp_path):
    export_model(
        small_model(seed=8, k=3, stage_k=(1, 3, 3, 2), output_stride=32, head="fcn"), tmp_path / "m.gnpk"
    )
    ckpt = encoder_checkpoint(tmp_path / "m.gnpk", DATA / "ccp" / "images", count=4, size=64, branches=2)
    assert ckpt["model_config"]["stage_k"] == [1, 2, 2, 2]
    torch.save(ckpt, tmp_path / "enc.pt")
    model = create_model(dict(ckpt["model_config"]))
    assert "encoder" in init_weights(model, tmp_path / "enc.pt", "seg")
    assert [len(stage[0].branches) for stage in model.encoder.stages] == [1, 2, 2, 2]


def test_whole_network_scope_refuses_fewer_branches(tmp_path):
    export_model(small_model(seed=7, k=2, output_stride=32, head="fcn"), tmp_path / "m.gnpk")
    with pytest.raises(Exception, match="--branches changes the encoder only"):
        packed_checkpoint(tmp_path / "m.gnpk", DATA / "ccp" / "images", branches=1, scope="all")
