"""Where OpenVINO's CPU plugin refuses a shape, the parity test skips and seg-bench reports n/a.

OpenVINO's AVX2 binary convolution takes fewer shapes than its AVX-512 one: on an AVX2-only CPU,
compile_model fails with "BinaryConvolution node with name '...' has unsupported parameters" for
some dilated maps. The plugin honours ``OV_CPU_MAX_ISA`` (with oneDNN's ``ONEDNN_MAX_CPU_ISA``) in
release builds, so an AVX-512 machine can run OpenVINO as an AVX2-only one does and reproduce the
real refusal; those runs happen in subprocesses because the cap is read when the library loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip(
    "openvino", reason="openvino is not installed (pip install '.[bench]'): no refusal to classify"
)

from seg_bench import layers as bench_layers  # noqa: E402

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"

REPO = Path(__file__).resolve().parents[2]
AVX2_CAP = {"OV_CPU_MAX_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# 12x12x128 -> 32 at dilation 3: one of the parity cases OpenVINO 2026.4 refuses on AVX2 only.
REFUSED = (12, 12, 128, 32, 3)
TAKEN = (10, 9, 40, 16, 2)

PROBE = textwrap.dedent("""
    import json, sys
    from seg_bench import layers as b
    result = {}
    for key, (h, w, cin, cout, d) in json.loads(sys.argv[1]).items():
        inputs = b.make_layer_inputs(b.LayerShape(key, "test", h, w, cin, cout, d))
        try:
            result[key] = {"impl": b.OpenVinoLayer(inputs, threads=1).impl}
        except b.OpenVinoUnsupported as refusal:
            result[key] = {"refused": refusal.reason}
    print(json.dumps(result))
""")


def capped_env() -> dict[str, str]:
    env = dict(os.environ, **AVX2_CAP)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_capped(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=capped_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def capped_probe() -> dict[str, dict[str, str]]:
    """OpenVINO under the AVX2 cap on one shape it takes and one it refuses (skips if the cap is ignored)."""
    done = run_capped(["-c", PROBE, json.dumps({"taken": TAKEN, "refused": REFUSED})])
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    impl = probe["taken"].get("impl", "")
    if "avx2" not in impl:
        pytest.skip(
            "this OpenVINO or CPU does not run its AVX2 binary convolution under "
            f"OV_CPU_MAX_ISA=AVX2 ({probe})"
        )
    return probe


def test_avx2_refusal_is_reported_with_the_engines_own_reason(capped_probe):
    if "refused" not in capped_probe["refused"]:
        pytest.skip(
            f"OpenVINO's AVX2 path now compiles {REFUSED}: no refusal left to classify ({capped_probe})"
        )
    reason = capped_probe["refused"]["refused"]
    assert "BinaryConvolution" in reason and "has unsupported parameters" in reason, reason
    assert "\n" not in reason and "Exception from" not in reason, reason  # one line: the check itself


def test_other_compile_errors_are_not_taken_for_a_refusal():
    """Only the plugin's 'unsupported parameters' check is a refusal; any other failure still fails."""
    import openvino as ov

    model = bench_layers.build_openvino_layer(
        bench_layers.make_layer_inputs(bench_layers.LayerShape("t", "test", 9, 7, 72, 24, 1))
    )
    with pytest.raises(RuntimeError) as bad_option, bench_layers.keep_signal_stack():
        ov.Core().compile_model(model, "CPU", {"NOT_AN_OPENVINO_PROPERTY": 1})
    assert bench_layers.openvino_refusal(bad_option.value) is None
    assert bench_layers.openvino_refusal(ValueError("has unsupported parameters")) is None
    # A real compile of a supported shape still works through the same wrapper.
    assert bench_layers.openvino_binary_conv_impl(bench_layers.compile_openvino(model, threads=1))


def test_parity_test_skips_only_the_refused_openvino_cases(capped_probe):
    """Under the AVX2 cap the parity test skips OpenVINO's refused cases with its reason; ours all run."""
    if "refused" not in capped_probe["refused"]:
        pytest.skip("OpenVINO's AVX2 path refuses no parity shape here")
    done = run_capped(
        [
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-k",
            "d3",
            str(REPO / "tests" / "bench" / "test_openvino_parity.py"),
        ]
    )
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.splitlines()[-1]
    assert "2 passed, 2 skipped" in summary, done.stdout[-3000:]  # ours (1 and 2 threads) ran and passed
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 2 and all("has unsupported parameters" in line for line in skips), skips


def test_seg_bench_layers_reports_na_and_keeps_the_other_figures(capped_probe, tmp_path):
    """seg-bench layers runs to the end under the AVX2 cap: refused shapes are n/a with the reason."""
    out = tmp_path / "layers.json"
    done = run_capped(
        [
            "-m",
            "seg_bench.bench",
            "layers",
            "--group",
            "seg512",
            "--threads",
            "1",
            "--isa",
            "avx2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["layers"]["rows"]
    assert [row["name"] for row in rows] == [s.name for s in bench_layers.SEGMENTATION_SHAPES]
    refused = [row for row in rows if row["openvino_unsupported"]]
    if not refused:
        pytest.skip("OpenVINO's AVX2 path takes every seg512 shape here")
    for row in rows:
        assert row["ours_ms"] > 0 and row["torch_ms"] > 0 and np.isfinite(row["speedup_vs_torch"])
        if row["openvino_unsupported"]:
            assert "has unsupported parameters" in row["openvino_unsupported"]
            assert row["openvino_ms"] is None and row["speedup_vs_openvino"] is None
        else:
            assert row["openvino_ms"] > 0 and "avx2" in row["openvino_impl"]
    table_rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    for row in refused:
        line = next(line for line in table_rows if line.startswith(f"| {row['name']} "))
        assert line.count("n/a") == 3, line  # ov ms, ov e2e ms, x ov
        assert f"n/a: OpenVINO cannot run {row['name']} with 1 thread(s) on this CPU: " in done.stdout
