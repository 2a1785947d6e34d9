"""The executor runs each run of consecutive lincomb ops as one kernels.lincomb_group call.

Results must equal running the ops one by one with numpy (runtime.ops.lincomb) bit for bit; maps
the kernel does not take (different shapes, broadcast by numpy) fall back to the numpy ops.
"""

from __future__ import annotations

import numpy as np

from seg_service.runtime import RunProfile, ops
from seg_service.runtime.executor import GraphExecutor
from seg_service.runtime.plan import LincombGroupStep, lincomb_groups


def block_end_graph(k: int = 3) -> tuple[dict, dict]:
    """input -> K per-channel affines ("branches") -> their sum -> K soft gates -> ReLU of one gate."""
    rng = np.random.default_rng(7)
    tensors, graph_ops = {}, []
    for j in range(k):
        tensors[f"m{j}"] = rng.standard_normal(6).astype(np.float32)
        tensors[f"b{j}"] = rng.standard_normal(6).astype(np.float32)
        graph_ops.append(
            {
                "op": "affine",
                "in": "input",
                "out": f"branch{j}",
                "mul": f"m{j}",
                "bias": f"b{j}",
                "relu_before": False,
                "relu_after": False,
            }
        )
    graph_ops.append(
        {"op": "lincomb", "out": "sum", "ins": [f"branch{j}" for j in range(k)], "coeffs": [1.0 / k] * k}
    )
    for j in range(k):
        graph_ops.append(
            {
                "op": "lincomb",
                "out": f"gate{j}",
                "ins": [f"branch{j}", "sum"],
                "coeffs": [0.3 + 0.1 * j, 0.7 - 0.1 * j],
            }
        )
    graph_ops.append({"op": "relu", "in": "gate0", "out": "relu0"})
    outputs = ["sum", "relu0"] + [f"gate{j}" for j in range(1, k)]
    return {"inputs": ["input"], "outputs": outputs, "ops": graph_ops}, tensors


def one_by_one(graph: dict, tensors: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    values = {"input": x}
    for op in graph["ops"]:
        if op["op"] == "affine":
            values[op["out"]] = ops.affine(values[op["in"]], tensors[op["mul"]], tensors[op["bias"]])
        elif op["op"] == "lincomb":
            values[op["out"]] = ops.lincomb([values[n] for n in op["ins"]], op["coeffs"])
        else:
            values[op["out"]] = ops.relu(values[op["in"]])
    return values


def test_groups_cover_each_run_of_lincombs() -> None:
    graph, _ = block_end_graph(3)
    (group,) = lincomb_groups(graph["ops"])
    assert group.indices == (3, 4, 5, 6)
    assert group.inputs == ("branch0", "branch1", "branch2")
    assert group.outputs == ("sum", "gate0", "gate1", "gate2")
    # The gates read the sum as the group's output 0, i.e. source len(inputs) + 0.
    assert group.program[1] == ((0, 0.3), (3, 0.7))


def test_executor_matches_the_ops_one_by_one() -> None:
    graph, tensors = block_end_graph(5)
    x = np.random.default_rng(1).standard_normal((37, 29, 6)).astype(np.float32)
    want = one_by_one(graph, tensors, x)
    profile = RunProfile()
    got = GraphExecutor(graph, tensors).run({"input": x}, profile=profile)
    assert set(got) == set(graph["outputs"])
    for name, value in got.items():
        np.testing.assert_array_equal(value, want[name])
    # The group is timed once, as one lincomb.
    assert [t.kind for t in profile.ops].count("lincomb") == 1


def test_maps_of_different_shapes_fall_back_to_numpy() -> None:
    """A [1, 1, C] map broadcast onto an [H, W, C] one: numpy's semantics, not the kernel's."""
    tensors = {"m": np.full(4, 2.0, np.float32), "b": np.zeros(4, np.float32)}
    graph = {
        "inputs": ["input", "small"],
        "outputs": ["mix"],
        "ops": [
            {
                "op": "affine",
                "in": "input",
                "out": "big",
                "mul": "m",
                "bias": "b",
                "relu_before": False,
                "relu_after": False,
            },
            {"op": "lincomb", "out": "mix", "ins": ["big", "small"], "coeffs": [0.5, 2.0]},
        ],
    }
    x = np.random.default_rng(2).standard_normal((5, 6, 4)).astype(np.float32)
    small = np.random.default_rng(3).standard_normal((1, 1, 4)).astype(np.float32)
    got = GraphExecutor(graph, tensors).run({"input": x, "small": small})["mix"]
    np.testing.assert_array_equal(got, ops.lincomb([x * 2.0, small], [0.5, 2.0]))


def test_outputs_read_only_as_binary_inputs_are_not_kept() -> None:
    """A gate read only as a binary conv's input, and a sum read only by its gates, exist as bits only;
    results equal a run that keeps every value (keep_all)."""
    graph, tensors = block_end_graph(3)
    rng = np.random.default_rng(5)
    tensors.update(
        {
            "bw": rng.integers(0, 2**6, size=(4, 3, 3, 1), dtype=np.uint64),
            "bm": rng.random(4).astype(np.float32),
            "bb": rng.standard_normal(4).astype(np.float32),
        }
    )
    graph["ops"] = [op for op in graph["ops"] if op["op"] != "relu"]
    graph["ops"].append(
        {
            "op": "bconv2d",
            "in": "gate0",
            "out": "conv",
            "weight": "bw",
            "in_channels": 6,
            "kernel": 3,
            "stride": 1,
            "padding": 1,
            "dilation": 1,
            "mul": "bm",
            "bias": "bb",
            "relu_before": False,
            "relu_after": False,
        }
    )
    graph["outputs"] = ["conv", "gate1", "gate2"]
    executor = GraphExecutor(graph, tensors)
    # Output 0 (the sum) is read only inside the group, output 1 (gate0) only as binary input.
    (group,) = [step for step in executor.steps if isinstance(step, LincombGroupStep)]
    assert group.index == 3 and group.drop == (0, 1) and group.packs == ("gate0",)
    x = np.random.default_rng(6).standard_normal((15, 17, 6)).astype(np.float32)
    everything = executor.run({"input": x}, keep_all=True)
    got = executor.run({"input": x})
    for name in graph["outputs"]:
        np.testing.assert_array_equal(got[name], everything[name])
