"""Fixtures shared across the test suite.

`packed_model_dir` holds real packed models made by the project's own exporter from small Group-Net
networks (random weights with non-trivial BatchNorm statistics, so masks are not constant). They are
quick to run, which keeps service and client tests fast; tests of the shipped models use `weights/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seg_service import kernels

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(params=kernels.available_isas())
def isa(request: pytest.FixtureRequest):
    """Forces one ISA path for the test (once per path this CPU has), restoring the previous one
    afterwards."""
    previous = kernels.isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(previous)


TEST_MODELS = {
    # name: (classes, palette, config overrides)
    "person": (["background", "person"], [[0, 0, 0], [220, 20, 60]], {"head": "aspp"}),
    "street": (
        [
            "sky",
            "building",
            "pole",
            "road",
            "pavement",
            "tree",
            "signsymbol",
            "fence",
            "car",
            "pedestrian",
            "bicyclist",
        ],
        None,
        {"head": "psp", "output_stride": 16},
    ),
}


def build_test_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Export a small Group-Net with randomised BatchNorm statistics as `<out_dir>/<name>.gnpk`."""
    import torch

    from seg_training.export import export_model
    from seg_training.models import create_model

    classes, palette, overrides = TEST_MODELS[name]
    torch.manual_seed(seed)
    model = create_model(num_classes=len(classes), k=2, width=0.25, head_channels=32, **overrides)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    model.eval()
    path = out_dir / f"{name}.gnpk"
    export_model(model, path, name=name, classes=classes, palette=palette)
    return path


@pytest.fixture(scope="session")
def packed_model_dir(tmp_path_factory) -> Path:
    """A model folder with two real packed models: `person` (2 classes) and `street` (11 classes)."""
    out = tmp_path_factory.mktemp("models")
    for name in TEST_MODELS:
        build_test_model(name, out)
    return out


@pytest.fixture(scope="session")
def packed_model_path(packed_model_dir) -> Path:
    return packed_model_dir / "person.gnpk"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (see the data README); skipping")
    return SHARED_DATA
