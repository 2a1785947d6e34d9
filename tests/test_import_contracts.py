"""The import rules between the layers (docs/architecture.md): the import-linter contracts in
pyproject.toml hold, and the file format works without the compiled kernels, the runtime or torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("the lint-imports command is not on the PATH")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


# Run in a fresh interpreter where the C++ extension, the runtime and torch cannot be imported: the
# format must still write, read and validate a model (post-processing included) and pack sign bits.
_FORMAT_ALONE = r"""
import importlib.abc, json, sys, tempfile
from pathlib import Path

BLOCKED = (
    "seg_service.kernels",
    "seg_service.runtime",
    "seg_service.api",
    "seg_training",
    "seg_client",
    "torch",
    "cv2",
)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Block())
try:
    import seg_service.kernels  # noqa: F401
    raise SystemExit("the block does not work")
except ImportError:
    pass

import numpy as np
import numpy.random  # noqa: F401  (its Cython modules)
import safetensors.numpy  # noqa: F401  (the allowed dependencies, and what they import themselves)

before = set(sys.modules)
from seg_service import format as gnpk

w = np.random.default_rng(0).standard_normal((4, 3, 3, 70)).astype(np.float32)
bits = gnpk.pack_sign_bits(w)
assert bits.shape == (4, 3, 3, 2) and bits.dtype == np.uint64
assert (gnpk.unpack_sign_bits(bits, 70) == (w < 0)).all()
assert gnpk.conv_output_size(64, 3, 2, 1, 1) == 32

tensors = {"b.weight": bits, "b.mul": np.ones(4, np.float32), "b.bias": np.zeros(4, np.float32),
           "c.weight": np.ones((2, 1, 1, 4), np.float32), "c.bias": np.zeros(2, np.float32)}
graph = {"inputs": ["input"], "outputs": ["logits"], "ops": [
    {"op": "bconv2d", "in": "input", "out": "b", "weight": "b.weight", "in_channels": 70, "kernel": 3,
     "stride": 1, "padding": 1, "dilation": 1, "mul": "b.mul", "bias": "b.bias", "relu_before": False,
     "relu_after": False},
    {"op": "conv2d", "in": "b", "out": "logits", "weight": "c.weight", "bias": "c.bias", "stride": 1,
     "padding": 0, "dilation": 1, "relu": False}]}
model = {"name": "alone", "arch": "test", "classes": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]],
         "input": {"mean": [0, 0, 0], "std": [1, 1, 1], "size_divisor": 8, "max_side": 64},
         "postprocess": {"logit_bias": [0.0, 0.5],
                         "guided_filter": {"radius": 4, "eps": 0.01, "subsample": 2, "clip": 3.0}}}
path = Path(tempfile.mkdtemp()) / "alone.gnpk"
checksum = gnpk.write_model(path, model, graph, tensors)
packed = gnpk.read_model(path)
assert packed.checksum == checksum and packed.metadata["format_version"] == "2"
assert gnpk.infer_channels(packed.graph, packed.tensors, 70)["logits"] == 2
try:
    gnpk.validate_postprocess({"guided_filter": {"radius": 0}}, 2)
    raise SystemExit("a bad post-processing spec passed")
except ValueError:
    pass
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_format_needs_no_kernels_runtime_or_torch(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORMAT_ALONE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # what importing and using the format added to numpy's and safetensors' own imports
    added = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {m for m in added if m.split(".")[0] == "seg_service"}
    assert "seg_service.format" in ours and all(m.startswith("seg_service.format") for m in ours), sorted(
        ours
    )
    others = (
        {m.split(".")[0] for m in added}
        - set(sys.stdlib_module_names)
        - {"seg_service", "numpy", "safetensors"}
    )
    assert not others, sorted(others)
