"""seg-bench runs end to end on a tiny network and reports both engines on the same input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from seg_bench.bench import main, parse_size  # noqa: E402
from seg_service import kernels  # noqa: E402


@pytest.mark.slow
def test_seg_bench_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDIAPIPE_PYTHON", raising=False)  # only our engines' rows here
    out = tmp_path / "bench.json"
    argv = [
        "model",
        "--k",
        "2",
        "--width",
        "0.25",
        "--head",
        "psp",
        "--sizes",
        "64x48",
        "80x72",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--no-reference",
        "--no-memory",
        "--packed",
        "--json",
        str(out),
    ]
    threads, torch_threads = kernels.get_num_threads(), torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        kernels.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    printed = capsys.readouterr().out
    assert "ISA path: " + kernels.isa() in printed and "CPU: " in printed
    # the popcount method the binary kernels use, and how it was chosen
    assert f"popcount {kernels.dispatch_info()['popcount']} (" in printed
    report = json.loads(out.read_text())
    assert report["environment"]["popcount"] == kernels.dispatch_info()["popcount"]
    assert report["environment"]["threads"] == 1 and report["environment"]["kernel_threads"] == 1
    sizes = report["model"]["sizes"]
    assert [(s["width"], s["height"]) for s in sizes] == [(64, 48), (80, 72)]
    for entry in sizes:
        assert [r["engine"] for r in entry["rows"]] == ["runtime", "pytorch"]
        assert all(r["median_ms"] > 0 and r["repeats"] == 1 for r in entry["rows"])
        assert entry["mask_agreement"] >= 0.999
        assert "bconv2d" in entry["runtime_profile_ms"]
    assert report["model"]["packed_file_mb"] < report["model"]["float_weights_mb"]


def test_parse_size_errors():
    assert parse_size("320x240") == (240, 320)
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        parse_size("320")


MEDIAPIPE_PYTHON = os.environ.get("MEDIAPIPE_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(
    not (MEDIAPIPE_PYTHON and Path(MEDIAPIPE_PYTHON).is_file()),
    reason="MEDIAPIPE_PYTHON (a Python with mediapipe installed, in its own venv) is not set",
)
def test_seg_bench_model_adds_mediapipe_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["model", "--k", "2", "--width", "0.25", "--head", "fcn", "--output-stride", "32"]
    argv += ["--sizes", "320x240", "--repeats", "3", "--threads", "1", "--no-reference", "--no-memory"]
    argv += ["--no-profile", "--packed", "--mediapipe-python", str(MEDIAPIPE_PYTHON), "--json", str(out)]
    threads, torch_threads = kernels.get_num_threads(), torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        kernels.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    printed = capsys.readouterr().out
    assert "MediaPipe selfie general, whole process() call" in printed
    assert "MediaPipe selfie landscape" in printed
    rows = {r["engine"]: r for r in json.loads(out.read_text())["model"]["sizes"][0]["rows"]}
    assert set(rows) == {"runtime", "pytorch", "mediapipe_general", "mediapipe_landscape"}
    for engine in ("mediapipe_general", "mediapipe_landscape"):
        row = rows[engine]
        assert row["repeats"] == 3 and 0 < row["min_ms"] <= row["median_ms"]
        assert 0.1 < row["file_mb"] < 1.0  # the .tflite files are about 0.25 MB
        assert row["vs_runtime"] == pytest.approx(row["median_ms"] / rows["runtime"]["median_ms"], rel=1e-6)
