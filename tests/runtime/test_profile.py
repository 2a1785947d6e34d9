"""Per-op profiling of the graph executor (RunProfile, the SEG_PROFILE switch) and the executor's use
of prepared weights and fused packing: the outputs never change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service import kernels
from seg_service.runtime import RunProfile, load_model
from seg_service.runtime.executor import GraphExecutor
from seg_service.runtime.plan import lincomb_groups

from .test_format import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def shared_input_model() -> tuple[dict, dict, dict]:
    """Two binary convs read the same value (packed once, shared) and one reads its own (fused)."""
    rng = np.random.default_rng(1)

    def bits(o: int, c: int) -> np.ndarray:
        return kernels.pack_bits(rng.standard_normal((o, 9, c)).astype(np.float32)).reshape(o, 3, 3, -1)

    tensors = {
        "a.weight": bits(8, 3),
        "b.weight": bits(8, 3),
        "c.weight": bits(5, 8),
        **{f"{n}.mul": rng.uniform(0.1, 1, o).astype(np.float32) for n, o in (("a", 8), ("b", 8), ("c", 5))},
        **{f"{n}.bias": rng.standard_normal(o).astype(np.float32) for n, o in (("a", 8), ("b", 8), ("c", 5))},
    }

    def bconv(name: str, src: str, out: str, channels: int, residual: str | None = None) -> dict:
        op = {
            "op": "bconv2d",
            "in": src,
            "out": out,
            "weight": f"{name}.weight",
            "in_channels": channels,
            "kernel": 3,
            "stride": 1,
            "padding": 1,
            "dilation": 1,
            "mul": f"{name}.mul",
            "bias": f"{name}.bias",
            "relu_before": False,
            "relu_after": True,
        }
        if residual:
            op["residual"] = residual
        return op

    # "ya" is also a graph output, so a and b are two convs, not one chain (bconv2d_chain).
    graph = {
        "inputs": ["input"],
        "outputs": ["logits", "ya"],
        "ops": [
            bconv("a", "input", "ya", 3),
            bconv("b", "input", "yb", 3, residual="ya"),
            bconv("c", "yb", "logits", 8),
        ],
    }
    model, _, _ = tiny_model()
    model = {**model, "classes": [f"c{i}" for i in range(5)], "palette": [[i, i, i] for i in range(5)]}
    return model, graph, tensors


def expected_output(x: np.ndarray, tensors: dict) -> np.ndarray:
    from seg_service.kernels import reference

    def conv(name, src, channels, residual=None):
        return reference.bconv2d(
            reference.pack_bits(src),
            tensors[f"{name}.weight"],
            channels,
            1,
            1,
            1,
            tensors[f"{name}.mul"],
            tensors[f"{name}.bias"],
            False,
            True,
            residual,
        )

    ya = conv("a", x, 3)
    return conv("c", conv("b", x, 3, ya), 8)


def test_profile_records_every_op_and_output_is_unchanged(tmp_path) -> None:
    _, graph, tensors = shared_input_model()
    executor = GraphExecutor(graph, tensors)
    x = np.random.default_rng(2).standard_normal((11, 13, 3)).astype(np.float32)
    plain = executor.run({"input": x})["logits"]
    np.testing.assert_allclose(plain, expected_output(x, tensors), rtol=1e-5, atol=1e-5)
    profile = RunProfile()
    for _ in range(2):
        np.testing.assert_array_equal(executor.run({"input": x}, profile=profile)["logits"], plain)
    assert profile.runs == 2 and profile.total_seconds > 0
    # The shared input is packed once per run (its own entry, at the first reader); the third conv fuses it.
    kinds = [(t.index, t.kind) for t in profile.ops]
    assert kinds == [(0, "pack_bits"), (0, "bconv2d"), (1, "bconv2d"), (2, "bconv2d")]
    assert all(t.runs == 2 for t in profile.ops)
    first = profile.ops[1]
    assert first.out == "ya" and first.detail == "11x13x3 -> 8 k3" and first.macs == 11 * 13 * 8 * 9 * 3
    assert first.gmacs_per_s > 0 and first.ms_per_run > 0
    assert set(profile.by_kind()) == {"bconv2d", "pack_bits"}
    assert sum(profile.by_kind().values()) <= profile.total_seconds
    text = profile.format(top=2)
    assert "2 run(s)" in text and "bconv2d" in text and "pack_bits" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 ", "2 "))]) == 2


def test_forward_profile_times_each_op_kind(tmp_path) -> None:
    path = tmp_path / "tiny.gnpk"
    gnpk.write_model(path, *tiny_model())
    model = load_model(path)
    x = np.random.default_rng(3).standard_normal((16, 16, 3)).astype(np.float32)
    profile = RunProfile()
    np.testing.assert_array_equal(model.forward(x, profile=profile), model.forward(x))
    assert profile.runs == 1 and [t.kind for t in profile.ops] == ["bconv2d", "conv2d", "upsample_bilinear"]
    assert set(profile.by_kind()) == {"bconv2d", "conv2d", "upsample_bilinear"}
    assert all(t.seconds > 0 for t in profile.ops)


def test_seg_profile_environment_prints_at_exit(tmp_path) -> None:
    path = tmp_path / "tiny.gnpk"
    gnpk.write_model(path, *tiny_model())
    code = (
        "import numpy as np; from seg_service.runtime import load_model; "
        f"m = load_model({str(path)!r}); x = np.zeros((16, 16, 3), np.float32); m.forward(x); m.forward(x)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "SEG_PROFILE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "[SEG_PROFILE] executor 0" in done.stderr and "2 run(s)" in done.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "SEG_PROFILE": "0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and "SEG_PROFILE" not in quiet.stderr


@pytest.fixture()
def exported_model_path(request):
    pytest.importorskip("torch")  # the fixture exports a small Group-Net with the training code
    return request.getfixturevalue("packed_model_path")


def test_real_model_profile_covers_the_run(exported_model_path) -> None:
    packed_model_path = exported_model_path
    model = load_model(packed_model_path)
    x = np.random.default_rng(4).standard_normal((64, 96, 3)).astype(np.float32)
    profile = RunProfile()
    model.forward(x, profile=profile)
    by_kind = profile.by_kind()
    assert "bconv2d" in by_kind and "conv2d" in by_kind
    # Every op of the graph appears once (plus the shared packings), except the ops computed inside
    # another: a run of lincomb ops is one kernel call, timed as its first op, and an ASPP head's
    # concat is never built (its projection reads the parts).
    executor = model._executor
    groups = lincomb_groups(executor.ops)
    assert any(len(g.indices) > 1 for g in groups)
    assert {i for g in groups for i in g.indices[1:]} <= executor.computed_elsewhere
    assert [executor.ops[i]["op"] for i in executor.computed_elsewhere].count("concat") == 1
    timed = [t for t in profile.ops if t.kind != "pack_bits"]
    assert len(timed) == len(executor.ops) - len(executor.computed_elsewhere)
    assert {t.index for t in timed}.isdisjoint(executor.computed_elsewhere)
    assert sum(t.kind == "lincomb" for t in profile.ops) == len(groups)
    assert sum(by_kind.values()) <= profile.total_seconds


def test_chain_is_one_timed_op_with_every_base() -> None:
    """Without the second output, a and b form a chain: one bconv2d entry whose MACs cover both bases,
    and the same results."""
    _, graph, tensors = shared_input_model()
    chained = {**graph, "outputs": ["logits"]}
    x = np.random.default_rng(3).standard_normal((11, 13, 3)).astype(np.float32)
    profile = RunProfile()
    got = GraphExecutor(chained, tensors).run({"input": x}, profile=profile)["logits"]
    np.testing.assert_array_equal(got, GraphExecutor(graph, tensors).run({"input": x})["logits"])
    assert [(t.index, t.kind) for t in profile.ops] == [(0, "bconv2d"), (2, "bconv2d")]
    assert profile.ops[0].macs == 2 * 11 * 13 * 8 * 9 * 3 and profile.ops[0].detail.endswith("x2")
