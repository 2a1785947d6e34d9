"""seg-bench's command line (layers / model / all), the peak-memory probes and the model targets (tiny runs,
no timing assertions)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from seg_bench import bench  # noqa: E402
from seg_service import kernels  # noqa: E402


@pytest.fixture()
def restore_threads():
    saved = kernels.get_num_threads(), torch.get_num_threads()
    yield
    kernels.set_num_threads(saved[0])
    torch.set_num_threads(saved[1])


def test_help_names_both_parts(capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "layers" in text and "model" in text and "all" in text
    with pytest.raises(SystemExit) as done:
        bench.main(["model", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text and "--no-memory" in text and "--packed" in text


def test_runtime_memory_probe_runs_without_torch(packed_model_path):
    spec = {"engine": "runtime", "path": str(packed_model_path), "size": [64, 64], "threads": 1, "runs": 1}
    mem = bench.measure_peak_memory(spec)
    assert mem["torch_imported"] is False
    assert mem["peak_rss_mb"] >= mem["base_rss_mb"] > 0
    assert mem["peak_over_base_mb"] == pytest.approx(mem["peak_rss_mb"] - mem["base_rss_mb"])


def test_memory_probe_reports_a_failure():
    spec = {"engine": "runtime", "path": "/nonexistent/model.gnpk", "size": [64, 64], "threads": 1, "runs": 1}
    with pytest.raises(RuntimeError, match="memory probe for runtime failed"):
        bench.measure_peak_memory(spec)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_threads")
def test_layers_part_writes_json(tmp_path, capsys):
    out = tmp_path / "layers.json"
    isa = kernels.available_isas()[0]
    assert (
        bench.main(
            [
                "layers",
                "--group",
                "resnet18",
                "--threads",
                "1",
                "--isa",
                isa,
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| 7x7x512->512" in printed and "load average" in printed and "CPU hand-off: " in printed
    data = json.loads(out.read_text())
    assert data["command"].startswith("seg-bench layers")
    assert len(data["layers"]["rows"]) == 4 and data["layers"]["targets"]


@pytest.mark.slow
@pytest.mark.usefixtures("restore_threads")
def test_model_part_with_shipped_model_and_memory(tmp_path, capsys, packed_model_path):
    out = tmp_path / "model.json"
    missing = tmp_path / "camvid.gnpk"
    argv = [
        "model",
        "--k",
        "2",
        "--width",
        "0.25",
        "--sizes",
        "64x64",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--no-reference",
        "--packed",
        str(packed_model_path),
        str(missing),
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "shipped person.gnpk (packed runtime)" in printed and f"no shipped model at {missing}" in printed
    assert "peak RSS MB" in printed and "profile:" in printed
    assert "CPU hand-off: " in printed  # where the host placed the CPUs, beside the times
    data = json.loads(out.read_text())
    entry = data["model"]["sizes"][0]
    engines = [r["engine"] for r in entry["rows"]]
    assert engines == ["runtime", "pytorch", "packed:person.gnpk"]
    rows = {r["engine"]: r for r in entry["rows"]}
    assert rows["runtime"]["memory"]["torch_imported"] is False
    assert rows["pytorch"]["memory"]["torch_imported"] is True
    assert rows["packed:person.gnpk"]["file_mb"] == pytest.approx(packed_model_path.stat().st_size / 1e6)
    assert all(r["memory"]["peak_rss_mb"] > 0 for r in entry["rows"])
    assert data["model"]["float_file_mb"] > data["model"]["packed_file_mb"]
    assert entry["runtime_profile_top_ops"] and "bconv2d" in entry["runtime_profile_ms"]
    assert any("smaller" in line for line in data["model"]["targets"])


def test_model_targets_summary():
    def entry(h, w, runtime_ms, smp_ms):
        return {
            "height": h,
            "width": w,
            "rows": [
                {"engine": "runtime", "median_ms": runtime_ms},
                {"engine": "smp_deeplabv3_resnet18", "median_ms": smp_ms},
            ],
        }

    result = {
        "packed_file_mb": 1.0,
        "float_file_mb": 12.0,
        "sizes": [entry(512, 512, 100.0, 250.0), entry(240, 320, 10.0, 50.0)],
    }
    lines = bench.summarize_model_targets(result, threads=2)
    assert lines[0].endswith("met") and "12.0x smaller" in lines[0]
    assert "2.50x faster" in lines[1] and lines[1].endswith("MISSED")
    assert "5.00x faster" in lines[2]
    result["float_file_mb"] = 4.0
    assert bench.summarize_model_targets(result, threads=2)[0].endswith("MISSED")


@pytest.mark.slow
def test_postprocess_part_times_the_shipped_person_model_both_ways(tmp_path, capsys, restore_threads):
    out = tmp_path / "post.json"
    assert (
        bench.main(
            [
                "postprocess",
                "--repeats",
                "1",
                "--sizes",
                "64x48",
                "96x64",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "| 64x48 |" in text and "paired difference" in text and "CPU hand-off: " in text
    result = json.loads(out.read_text())
    assert result["command"].startswith("seg-bench postprocess")
    post = result["postprocess"]
    assert "guided_filter" in post["postprocess"] and [r["size"] for r in post["rows"]] == ["64x48", "96x64"]
    assert all(r["refined_ms"] > 0 and r["plain_ms"] > 0 for r in post["rows"])


def test_postprocess_part_refuses_a_model_without_one(packed_model_path, capsys, restore_threads):
    with pytest.raises(SystemExit) as done:
        bench.main(["postprocess", "--packed", str(packed_model_path), "--repeats", "1"])
    assert done.value.code == 2
    assert "stores no post-processing" in capsys.readouterr().err
