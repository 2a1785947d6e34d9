"""Growing a trained Group-Net from K to m*K branches keeps its function; the copies then diverge."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from seg_training.binary.layers import binary_convs  # noqa: E402
from seg_training.binary.quantizers import binary_sign  # noqa: E402
from seg_training.data.errors import InputError  # noqa: E402
from seg_training.engine.checkpoint import FORMAT, VERSION, init_weights, save_atomic  # noqa: E402
from seg_training.engine.grow_branches import grow_branches, main  # noqa: E402
from seg_training.models import ModelConfig, create_model  # noqa: E402
from tests.parity.helpers import SMALL, small_model  # noqa: E402

SKIP_OS32 = dict(k=2, output_stride=32, head="aspp", decoder="skip", aspp_rates=[8, 16, 24])


def _checkpoint(**config) -> dict:
    model = small_model(seed=3, **config)
    cfg = dataclasses.asdict(ModelConfig(**{**SMALL, **config}))
    return {
        "format": FORMAT,
        "version": VERSION,
        "task": "seg",
        "model": model.state_dict(),
        "model_config": cfg,
    }


def _outputs(ckpt: dict, x: torch.Tensor) -> torch.Tensor:
    model = create_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(
    ("config", "k"),
    [
        (SKIP_OS32, 4),
        (SKIP_OS32, 6),
        (dict(k=2, output_stride=8, bpac=False, head="aspp"), 4),
        (dict(k=3, output_stride=32, head="psp"), 6),
        (dict(k=2, decomposition="layer", output_stride=32, head="fcn"), 4),
    ],
)
def test_grown_network_computes_the_original_function(config, k):
    ckpt = _checkpoint(**config)
    grown, report = grow_branches(ckpt, k, noise=0.0)
    assert grown["model_config"]["k"] == k and report.k_to == k
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    want, got = _outputs(ckpt, x), _outputs(grown, x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert report.max_abs_difference < 1e-3 * float(want.abs().max())
    assert report.flipped_share == 0.0


def test_noise_flips_only_the_copies_and_training_can_start_from_the_file(tmp_path):
    ckpt = _checkpoint(**SKIP_OS32)
    grown, report = grow_branches(ckpt, 4, noise=0.5, seed=1)
    assert 0.0 < report.flipped_share < 0.5
    state = grown["model"]
    # originals untouched, copies moved (in sign, for some weights) away from their source
    original = ckpt["model"]["encoder.layer2.0.branches.1.conv1.weight"]
    assert torch.equal(state["encoder.layer2.0.branches.1.conv1.weight"], original)
    copy = state["encoder.layer2.0.branches.3.conv1.weight"]
    assert not torch.equal(binary_sign(copy), binary_sign(original))
    assert float((binary_sign(copy) != binary_sign(original)).float().mean()) < 0.5
    # the grown file initialises a K=4 model through the trainer's own path
    path = tmp_path / "grown.pt"
    save_atomic(grown, path)
    model = create_model(grown["model_config"])
    assert "(all)" in init_weights(model, path, "seg", "all")
    # every branch conv is doubled; the three shared (binary) shortcuts of layer2-4 are not
    before = len(binary_convs(create_model(ckpt["model_config"]).encoder))
    assert len(binary_convs(model.encoder)) == 2 * (before - 3) + 3


def test_refusals():
    with pytest.raises(InputError, match="multiple"):
        grow_branches(_checkpoint(**SKIP_OS32), 3)
    with pytest.raises(InputError, match="multiple"):
        grow_branches(_checkpoint(**SKIP_OS32), 2)
    # BPAC gives every branch its own dilation: copies would run at other rates
    with pytest.raises(InputError, match="BPAC"):
        grow_branches(_checkpoint(k=2, output_stride=8, bpac=True, head="aspp"), 4)
    with pytest.raises(InputError, match="stage_k"):
        grow_branches(_checkpoint(**{**SKIP_OS32, "stage_k": (1, 2, 2, 2)}), 4)


def test_cli(tmp_path, capsys):
    src = tmp_path / "src.pt"
    save_atomic(_checkpoint(**SKIP_OS32), src)
    out = tmp_path / "out.pt"
    assert main([str(src), "--k", "4", "--out", str(out)]) == 0
    assert "K 2 -> 4" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["model_config"]["k"] == 4
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.pt"), "--k", "4", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
