"""seg-bench ops: every float op of the shipped models' plans, ours against the same op in PyTorch.

No timed assertions (the machines are shared): the rows must be complete and consistent, and each
op of ours must compute what its PyTorch counterpart computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_bench import float_ops  # noqa: E402
from seg_bench.bench import main  # noqa: E402
from seg_service import kernels  # noqa: E402
from seg_service.runtime import load_model  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
SHIPPED = [WEIGHTS / "person.gnpk", WEIGHTS / "camvid.gnpk"]
SIZE = (64, 96)  # height, width: small, every op still runs on a real map


@pytest.fixture(autouse=True)
def _restore_threads():
    threads, torch_threads = kernels.get_num_threads(), torch.get_num_threads()
    yield
    kernels.set_num_threads(threads)
    torch.set_num_threads(torch_threads)


def _input(size=SIZE) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((*size, 3)).astype(np.float32)


def _float_steps(model) -> list:
    """The plan's float steps that do work (what the benchmark must cover)."""
    x = _input()
    values = float_ops._run_all(model, x)
    return [
        step
        for step in float_ops._steps(model)
        if step.kind not in float_ops.BINARY_KINDS
        and not (type(step).__name__ == "BroadcastStep" and values[step.op["in"]].shape[:2] == (1, 1))
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_float_op_computes_what_pytorch_computes(path):
    model = load_model(path)
    cases, notes = float_ops.float_op_cases(model, _input())
    assert [c.index for c in cases] == [s.index for s in _float_steps(model)]
    kinds = {c.kind for c in cases}
    assert {"conv2d", "maxpool2d", "lincomb", "upsample_bilinear"} <= kinds
    assert any("k7 s2" in c.detail for c in cases), "the stem conv is among the ops"
    assert any("k1" in c.detail for c in cases), "the 1x1 convs are among the ops"
    assert all("does no work" in n for n in notes)
    for case in cases:
        assert set(case.torch) == set(float_ops.TORCH_LAYOUTS)
        ours = case.check()
        assert len(ours) == len(case.names) >= 1
        for layout, call in case.torch.items():
            theirs = call()
            diff = float_ops.relative_difference(ours, theirs)
            assert diff <= float_ops.SAME_OP_TOLERANCE, (case.index, case.kind, layout, diff)
        # The timed call is the runtime's own step: it writes the floats it writes in a forward pass.
        assert all(a.dtype == np.float32 for a in case.ours())


def test_a_different_op_is_detected():
    model = load_model(SHIPPED[0])
    cases, _ = float_ops.float_op_cases(model, _input())
    case = next(c for c in cases if c.kind == "upsample_bilinear")
    ours = case.check()
    theirs = case.torch["nchw"]()
    assert float_ops.relative_difference(ours, theirs) <= float_ops.SAME_OP_TOLERANCE
    off = [a * np.float32(1.01) for a in ours]
    assert float_ops.relative_difference(off, theirs) > float_ops.SAME_OP_TOLERANCE


def test_benchmark_rows_are_complete_and_consistent():
    before = (kernels.get_num_threads(), torch.get_num_threads())
    result = float_ops.run_float_op_benchmark(
        SHIPPED, SIZE, threads=(1, 2), repeats=2, warmup=0, settle=0.0, min_sample_ms=0.0
    )
    assert result["size"] == f"{SIZE[1]}x{SIZE[0]}"
    expected = {
        (path.name, step.index, count)
        for path in SHIPPED
        for step in _float_steps(load_model(path))
        for count in (1, 2)
    }
    rows = result["rows"]
    assert {(r["model"], r["index"], r["threads"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert r["ours_ms"] > 0 and r["torch_ms"] > 0 and r["speed_ratio"] > 0
        assert set(r["torch_ms_by_layout"]) == set(float_ops.TORCH_LAYOUTS)
        assert r["torch_ms"] == min(r["torch_ms_by_layout"].values())
        assert r["torch_ms"] == r["torch_ms_by_layout"][r["torch_layout"]]
        # the ratio is ours' speed over PyTorch's, from the medians
        assert r["speed_ratio"] == pytest.approx(r["torch_ms"] / r["ours_ms"], rel=1e-12)
        assert r["meets_target"] == (r["speed_ratio"] >= float_ops.TARGET_SPEED_RATIO)
        assert 0 < r["ours_min_ms"] <= r["ours_ms"] and 0 < r["torch_min_ms"] <= r["torch_ms"]
        assert r["same_output"] and r["max_rel_diff"] <= float_ops.SAME_OP_TOLERANCE
        assert r["repeats"] == 2 and r["calls_per_sample"] == 1
    shares = result["float_shares"]
    assert {(s["model"], s["threads"]) for s in shares} == {(p.name, t) for p in SHIPPED for t in (1, 2)}
    for s in shares:
        assert 0 < s["float_share"] < 1 and s["binary_ms"] > 0
        assert s["float_share"] == pytest.approx(s["float_ms"] / s["forward_ms"])
        assert s["float_ms"] == pytest.approx(sum(s["float_ms_by_kind"].values()))
        assert not set(s["float_ms_by_kind"]) & float_ops.BINARY_KINDS
        assert s["meets_target"] == (s["float_share"] <= float_ops.TARGET_FLOAT_SHARE)
        minima = s["op_minima"]
        assert 0 < minima["float_share"] < 1 and minima["runs"] == 3
        assert minima["float_share"] == pytest.approx(
            minima["float_ms"] / (minima["float_ms"] + minima["binary_ms"])
        )
    assert (kernels.get_num_threads(), torch.get_num_threads()) == before  # thread counts restored


def test_seg_bench_ops_command(tmp_path, capsys):
    out = tmp_path / "ops.json"
    argv = ["ops", "--packed", str(SHIPPED[0]), "--size", "96x64", "--threads", "1", "--repeats", "1"]
    argv += ["--settle", "0", "--min-sample-ms", "0", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CPU: " in printed and "oneDNN" in printed
    assert "| model " in printed and "stem#1" in printed
    assert "float-op share of the forward pass" in printed and "person.gnpk, 1 thread(s)" in printed
    report = json.loads(out.read_text())["ops"]
    assert report["environment"]["threads"] == [1]
    assert report["rows"] and all(r["threads"] == 1 for r in report["rows"])
    assert report["targets"][0].startswith("1 thread(s): ")


def test_seg_bench_ops_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ops", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("oneDNN", "--threads", "--packed", "--size", "--repeats", "--json", "lincomb", "15 %"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "ops" in capsys.readouterr().out


def test_thread_lists():
    assert float_ops._thread_list("1,2") == [1, 2]
    assert float_ops._thread_list("2") == [2]
    with pytest.raises(Exception, match=">= 1"):
        float_ops._thread_list("0")
