"""The packed file format: round trip, and a clear ModelFormatError for every way a file can be bad."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from seg_service import format as gnpk
from seg_service.format.model_file import _DTYPE_NAMES
from seg_service.runtime import ModelFormatError


def tiny_model() -> tuple[dict, dict, dict]:
    """A hand-written graph: binary 3x3 conv -> float 1x1 classifier -> upsample to the input."""
    rng = np.random.default_rng(0)
    tensors = {
        "b.weight": rng.integers(0, 2**63, size=(4, 3, 3, 1), dtype=np.uint64) & np.uint64(0b111),
        "b.mul": rng.random(4).astype(np.float32),
        "b.bias": rng.standard_normal(4).astype(np.float32),
        "cls.weight": rng.standard_normal((2, 1, 1, 4)).astype(np.float32),
        "cls.bias": np.zeros(2, np.float32),
    }
    graph = {
        "inputs": ["input"],
        "outputs": ["logits"],
        "ops": [
            {
                "op": "bconv2d",
                "in": "input",
                "out": "b",
                "weight": "b.weight",
                "in_channels": 3,
                "kernel": 3,
                "stride": 2,
                "padding": 1,
                "dilation": 1,
                "mul": "b.mul",
                "bias": "b.bias",
                "relu_before": True,
                "relu_after": False,
            },
            {
                "op": "conv2d",
                "in": "b",
                "out": "c",
                "weight": "cls.weight",
                "bias": "cls.bias",
                "stride": 1,
                "padding": 0,
                "dilation": 1,
                "relu": False,
            },
            {"op": "upsample_bilinear", "in": "c", "out": "logits", "like": "input"},
        ],
    }
    model = {
        "name": "tiny",
        "arch": "handmade",
        "classes": ["background", "thing"],
        "palette": [[0, 0, 0], [255, 0, 0]],
        "input": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "size_divisor": 8,
            "max_side": 64,
            "channel_order": "RGB",
        },
    }
    return model, graph, tensors


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "tiny.gnpk"
    gnpk.write_model(path, *tiny_model())
    return path


def rewrite(
    tmp_path,
    metadata_changes: dict,
    tensors: dict | None = None,
    model=None,
    graph=None,
    fix_checksum: bool = True,
):
    """A file with edited metadata, written by the plain safetensors library (as an attacker would)."""
    base_model, base_graph, base_tensors = tiny_model()
    model, graph = model or base_model, graph or base_graph
    tensors = base_tensors if tensors is None else tensors
    model_json, graph_json = json.dumps(model), json.dumps(graph)
    metadata = {
        "format": gnpk.FORMAT_NAME,
        "format_version": str(gnpk.FORMAT_VERSION),
        "model": model_json,
        "graph": graph_json,
    }
    if fix_checksum:
        metadata["sha256"] = gnpk.compute_checksum(
            model_json,
            graph_json,
            ((n, _DTYPE_NAMES[a.dtype], a.shape, a.tobytes()) for n, a in tensors.items()),
        )
    metadata.update(metadata_changes)
    path = tmp_path / "edited.gnpk"
    path.write_bytes(safetensors_save(tensors, metadata={k: v for k, v in metadata.items() if v is not None}))
    return path


def test_round_trip(model_file):
    model, graph, tensors = tiny_model()
    packed = gnpk.read_model(model_file)
    assert packed.model == model
    assert packed.graph == graph
    assert packed.file_size == model_file.stat().st_size
    assert sorted(packed.tensors) == sorted(tensors)
    for name, array in tensors.items():
        assert packed.tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(packed.tensors[name], array)
    assert len(packed.checksum) == 64 and packed.checksum == packed.metadata["sha256"]


def test_file_is_plain_safetensors(model_file):
    tensors = safetensors_load(model_file.read_bytes())
    np.testing.assert_array_equal(tensors["b.weight"], tiny_model()[2]["b.weight"])
    header_len = struct.unpack("<Q", model_file.read_bytes()[:8])[0]
    metadata = json.loads(model_file.read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert metadata["format"] == "groupnet-packed" and metadata["format_version"] == "1"


def test_checksum_is_deterministic(tmp_path):
    a = gnpk.write_model(tmp_path / "a.gnpk", *tiny_model())
    b = gnpk.write_model(tmp_path / "b.gnpk", *tiny_model())
    assert a == b


@pytest.mark.parametrize("keep", [0, 5, 20, -1])
def test_truncated_file(model_file, keep):
    data = model_file.read_bytes()
    model_file.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    with pytest.raises(ModelFormatError, match="truncated file"):
        gnpk.read_model(model_file)


def test_tampered_tensor_byte(model_file):
    data = bytearray(model_file.read_bytes())
    data[-10] ^= 0x01  # inside the tensor data
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        gnpk.read_model(model_file)


def test_tampered_graph_field(model_file):
    data = model_file.read_bytes()
    edited = data.replace(b'\\"stride\\":2', b'\\"stride\\":1', 1)  # same length: header stays valid JSON
    assert edited != data
    model_file.write_bytes(edited)
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        gnpk.read_model(model_file)


def test_wrong_version(tmp_path):
    path = rewrite(tmp_path, {"format_version": "5"})
    with pytest.raises(ModelFormatError, match=r"unsupported format version '5'.*reads versions 1, 2, 3, 4"):
        gnpk.read_model(path)


def test_version_4_only_for_files_with_test_time(tmp_path):
    """A stored test-time augmentation makes the file version 4; an older version that claims one is
    refused, so an older reader cannot silently run a single pass."""
    model, graph, tensors = tiny_model()
    spec = {"flip": True, "scales": [0.75, 1.0, 1.25]}
    path = tmp_path / "tta.gnpk"
    gnpk.write_model(path, dict(model, test_time=spec), graph, tensors)
    packed = gnpk.read_model(path)
    assert packed.metadata["format_version"] == "4" and packed.model["test_time"] == spec
    for version in ("1", "2", "3"):
        edited = rewrite(tmp_path, {"format_version": version}, model=dict(model, test_time=spec))
        with pytest.raises(
            ModelFormatError, match=f"'test_time' needs format version 4, the file says version {version}"
        ):
            gnpk.read_model(edited)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ([0.75, 1.0], "must be a JSON object"),
        ({"flip": True}, "must be a JSON object with exactly"),
        ({"flip": True, "scales": [1.0], "mode": "mean"}, "must be a JSON object with exactly"),
        ({"flip": 1, "scales": [1.0]}, "'flip' must be true or false"),
        ({"flip": False, "scales": []}, "give 1 to 6 scales"),
        ({"flip": False, "scales": "1.0"}, "give 1 to 6 scales"),
        ({"flip": False, "scales": [1.0] * 7}, "give 1 to 6 scales"),
        ({"flip": False, "scales": [0.2]}, "each scale must be a number from 0.25 to 2.0"),
        ({"flip": False, "scales": [1.0, True]}, "each scale must be a number"),
        ({"flip": False, "scales": [1.0, float("nan")]}, "each scale must be a number"),
        ({"flip": False, "scales": [1.0, 1]}, "must not repeat"),
    ],
)
def test_bad_test_time_is_refused(tmp_path, spec, problem):
    model, graph, tensors = tiny_model()
    path = rewrite(tmp_path, {"format_version": "4"}, model=dict(model, test_time=spec))
    with pytest.raises(ModelFormatError, match=problem):
        gnpk.read_model(path)


def test_parse_scales():
    assert gnpk.parse_scales("1") == (1.0,)
    assert gnpk.parse_scales("0.75, 1,1.25") == (0.75, 1.0, 1.25)
    for text, problem in (("", "expected numbers"), ("1,a", "expected numbers"), ("3", "from 0.25 to 2.0")):
        with pytest.raises(ValueError, match=problem):
            gnpk.parse_scales(text)


def test_version_2_only_for_files_with_postprocess(tmp_path):
    """A file is written with the lowest version that describes it; version 1 cannot carry a postprocess."""
    model, graph, tensors = tiny_model()
    spec = {"logit_bias": [0.0, -0.5]}
    for name, description, version in (
        ("plain", model, "1"),
        ("refined", dict(model, postprocess=spec), "2"),
    ):
        path = tmp_path / f"{name}.gnpk"
        gnpk.write_model(path, description, graph, tensors)
        assert gnpk.read_model(path).metadata["format_version"] == version
    assert gnpk.read_model(rewrite(tmp_path, {"format_version": "2"})).model == model  # v2 without it: fine
    path = rewrite(tmp_path, {"format_version": "1"}, model=dict(model, postprocess=spec))
    with pytest.raises(ModelFormatError, match="'postprocess' needs format version 2"):
        gnpk.read_model(path)


def test_not_a_packed_model(tmp_path):
    path = rewrite(tmp_path, {"format": None})
    with pytest.raises(ModelFormatError, match="not a packed model"):
        gnpk.read_model(path)
    garbage = tmp_path / "garbage.gnpk"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{this is not json")
    with pytest.raises(ModelFormatError, match="corrupt file header"):
        gnpk.read_model(garbage)
    with pytest.raises(ModelFormatError, match="cannot read model file"):
        gnpk.read_model(tmp_path / "missing.gnpk")


def test_unknown_op(tmp_path):
    _, graph, _ = tiny_model()
    graph["ops"][1]["op"] = "deformable_conv"
    path = rewrite(tmp_path, {}, graph=graph)
    with pytest.raises(ModelFormatError, match=r"unknown op 'deformable_conv' \(op #1\)"):
        gnpk.read_model(path)


def test_missing_tensor(tmp_path):
    tensors = tiny_model()[2]
    del tensors["cls.bias"]
    path = rewrite(tmp_path, {}, tensors=tensors)
    with pytest.raises(ModelFormatError, match="missing tensor 'cls.bias'"):
        gnpk.read_model(path)


def test_writer_validates_graph(tmp_path):
    model, graph, tensors = tiny_model()
    graph["ops"][1]["in"] = "nowhere"
    with pytest.raises(ModelFormatError, match="reads value 'nowhere' before it is defined"):
        gnpk.write_model(tmp_path / "x.gnpk", model, graph, tensors)
    model, graph, tensors = tiny_model()
    tensors["b.weight"] = tensors["b.weight"][:, :1]  # 1x3 taps for a 3x3 kernel
    with pytest.raises(ModelFormatError, match="bconv2d weight has shape"):
        gnpk.write_model(tmp_path / "x.gnpk", model, graph, tensors)
    model, graph, tensors = tiny_model()
    graph["ops"][0]["relu_before"] = "yes"
    with pytest.raises(ModelFormatError, match="'relu_before' must be true or false"):
        gnpk.write_model(tmp_path / "x.gnpk", model, graph, tensors)
    model, graph, tensors = tiny_model()
    model["palette"] = [[0, 0, 0]]
    with pytest.raises(ModelFormatError, match="palette"):
        gnpk.write_model(tmp_path / "x.gnpk", model, graph, tensors)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_wrong_tensor_dtype(tmp_path):
    tensors = tiny_model()[2]
    tensors["b.mul"] = tensors["b.mul"].astype(np.float16)
    path = rewrite(tmp_path, {}, tensors=tensors)
    with pytest.raises(ModelFormatError, match="tensor 'b.mul' has dtype float16, expected f32"):
        gnpk.read_model(path)
