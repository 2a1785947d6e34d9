"""The executor's plan (seg_service.runtime.plan): on the shipped models' graphs every step reads only
what earlier steps wrote or packed, every op is computed by exactly one step, nothing is freed
before its last reader, and the fusions the runtime relies on are found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service.runtime.executor import GraphExecutor
from seg_service.runtime.plan import (
    BinaryConvStep,
    LincombGroupStep,
    PackStep,
    ProjectionStep,
    plan_graph,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@pytest.fixture(scope="module", params=["person", "camvid"])
def packed(request) -> gnpk.PackedFile:
    path = WEIGHTS / f"{request.param}.gnpk"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return gnpk.read_model(path)


def test_steps_read_only_what_earlier_steps_made(packed) -> None:
    steps = plan_graph(packed.graph, packed.tensors, lambda op: None)
    keep = set(packed.graph["outputs"])
    floats, bits = set(packed.graph["inputs"]), set()
    computed: list[int] = []
    for step in steps:
        assert set(step.reads) <= floats, (step, set(step.reads) - floats)
        assert set(step.reads_bits) <= bits, (step, set(step.reads_bits) - bits)
        assert not (set(step.frees) & keep)
        drop = set(step.group.outputs[m] for m in step.drop) if isinstance(step, LincombGroupStep) else set()
        floats |= set(step.writes) - drop
        bits |= set(step.packs)
        floats -= set(step.frees)
        bits -= set(step.frees_bits)
        if not isinstance(step, PackStep):
            computed.extend(step.ops)
    assert sorted(computed) == list(range(len(packed.graph["ops"])))  # each op in exactly one step
    assert keep <= floats


def test_fusions_found_on_the_shipped_models(packed) -> None:
    steps = plan_graph(packed.graph, packed.tensors, lambda op: None)
    kinds = {type(step) for step in steps}
    assert LincombGroupStep in kinds and BinaryConvStep in kinds
    # every binary conv input is packed once: by its producer, a PackStep or (one reader) itself
    packers = [name for step in steps for name in step.packs]
    assert len(packers) == len(set(packers))
    if packed.model["name"] == "camvid":  # binary ASPP: chains of K bases and a fused projection
        assert any(isinstance(s, BinaryConvStep) and len(s.bases) > 1 for s in steps)
        assert any(isinstance(s, ProjectionStep) for s in steps)


def test_keep_all_gives_the_same_outputs(packed) -> None:
    executor = GraphExecutor(packed.graph, packed.tensors)
    x = np.random.default_rng(0).standard_normal((64, 96, 3)).astype(np.float32)
    feeds = {executor.inputs[0]: x}
    everything = executor.run(feeds, keep_all=True)
    for name, value in executor.run(feeds).items():
        np.testing.assert_array_equal(value, everything[name])
