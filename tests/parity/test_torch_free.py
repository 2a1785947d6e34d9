"""The runtime predicts with an exported model in a fresh interpreter that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("cv2")

from seg_training.export import export_model  # noqa: E402

from .helpers import load_rgb, small_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import numpy as np
from seg_service.runtime import load_model
model = load_model(sys.argv[1])
mask = model.predict(np.load(sys.argv[2]))
print(json.dumps({"shape": list(mask.shape), "dtype": str(mask.dtype), "classes": model.classes,
                  "torch": "torch" in sys.modules, "seg_training": "seg_training" in sys.modules}))
"""


def test_prediction_without_torch(tmp_path):
    model = small_model(seed=2, k=3, output_stride=8, head="psp")
    export_model(model, tmp_path / "m.gnpk", classes=["bg", "a", "b", "c", "d"])
    rgb = load_rgb("ccp/images/0960.jpg")
    np.save(tmp_path / "image.npy", rgb)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "m.gnpk"), str(tmp_path / "image.npy")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "shape": list(rgb.shape[:2]),
        "dtype": "uint8",
        "classes": ["bg", "a", "b", "c", "d"],
        "torch": False,
        "seg_training": False,
    }
