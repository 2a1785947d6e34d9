"""The integer stem (``conv2d_u8``, format version 3): the exporter's rewrite of a float stem, the
runtime's integer conv against the float conv it stands for, the u8 route of ``predict`` against
the float route, and the file rules. On every ISA path (the ``isa`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service.runtime import load_model, ops
from seg_training.export import ExportError, integer_stem, repack_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
PERSON = ROOT / "weights" / "person.gnpk"
Image = pytest.importorskip("PIL.Image")


def photos(folder: str, count: int) -> list[np.ndarray]:
    paths = sorted((DATA / folder / "images").glob("*.jpg"))[:count]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


@pytest.fixture(scope="module")
def float_stem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped person model with a float stem (repacked back to one if it ships an integer one)."""
    packed = gnpk.read_model(PERSON)
    path = tmp_path_factory.mktemp("u8") / "person_float.gnpk"
    graph, tensors = packed.graph, dict(packed.tensors)
    ops_list = []
    for op in graph["ops"]:
        if op["op"] == "conv2d_u8":
            tensors["stem.float"] = gnpk.u8_conv_float_weight(op, tensors)
            op = {
                "op": "conv2d",
                **{k: op[k] for k in ("in", "out", "bias", "stride", "padding", "relu")},
                "weight": "stem.float",
                "dilation": 1,
            }
        ops_list.append(op)
    gnpk.write_model(path, packed.model, {**graph, "ops": ops_list}, tensors)
    return path


@pytest.fixture(scope="module")
def u8_stem_file(float_stem_file: Path) -> Path:
    path = float_stem_file.with_name("person_u8.gnpk")
    repack_model(float_stem_file, path, stem_u8=True)
    return path


def test_rewrite_stores_a_version_3_file_with_7_bit_weights(u8_stem_file: Path) -> None:
    packed = gnpk.read_model(u8_stem_file)
    assert packed.metadata["format_version"] == "3"
    (stem,) = [op for op in packed.graph["ops"] if op["op"] == "conv2d_u8"]
    assert stem["in"] == packed.graph["inputs"][0]
    q = packed.tensors[stem["weight"]]
    assert q.dtype == np.int8 and q.shape == (32, 7, 7, 3)
    assert -64 <= int(q.min()) and int(q.max()) <= 63
    # each output channel uses the range: its largest weight is at one end of it
    peaks = np.maximum(q.max(axis=(1, 2, 3)), -q.min(axis=(1, 2, 3)))
    assert np.all(peaks >= 63)
    mean, std = packed.model["input"]["mean"], packed.model["input"]["std"]
    assert stem["pixel_zero"] == pytest.approx([255 * m for m in mean])
    assert stem["pixel_scale"] == pytest.approx([255 * s for s in std])


def test_integer_conv_equals_the_float_conv_it_stands_for(isa: str, u8_stem_file: Path) -> None:
    """ImageConv on a real photo's pixels, odd sizes and borders included, against ops.conv2d with
    the float weights the op defines (docs/format.md): the same to float rounding."""
    packed = gnpk.read_model(u8_stem_file)
    (op,) = [op for op in packed.graph["ops"] if op["op"] == "conv2d_u8"]
    t = packed.tensors
    conv = ops.ImageConv(
        t[op["weight"]], t[op["scale"]], t[op["bias"]], op["pixel_scale"], op["pixel_zero"],
        op["stride"], op["padding"], op["relu"],
    )  # fmt: skip
    weight = gnpk.u8_conv_float_weight(op, t)
    mean = np.asarray(op["pixel_zero"], dtype=np.float32) / 255
    std = np.asarray(op["pixel_scale"], dtype=np.float32) / 255
    for rgb in (
        photos("ccp", 1)[0][:97, :131],
        photos("portraits", 1)[0][:64, :64],
        np.zeros((5, 9, 3), np.uint8),
    ):
        x = ((rgb.astype(np.float32) / 255 - mean) / std).astype(np.float32)
        expected = ops.conv2d(x, weight, t[op["bias"]], op["stride"], op["padding"], 1, op["relu"])
        for source in (x, np.ascontiguousarray(rgb)):
            got = conv(source)
            assert got.shape == expected.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_predict_hands_the_stem_pixels_and_gets_the_float_route_logits(isa: str, u8_stem_file: Path) -> None:
    """predict's u8 input (no normalised copy) gives bit for bit the logits of forward() on the
    normalised, zero-padded image, for sizes that need padding, resizing and a mirrored pass."""
    model = load_model(u8_stem_file)
    assert model._pixel_pad is not None
    for rgb in (*photos("portraits", 2), photos("ccp", 1)[0][:250, :301], photos("camvid", 1)[0]):
        x, (h, w) = model.preprocess(rgb)
        assert x.dtype == np.float32
        expected = model.forward(x)[:h, :w]
        logits, _ = model._forward_processed(rgb, flip=False, with_guide=False)
        np.testing.assert_array_equal(logits, expected)
        mirrored = np.zeros_like(x)
        mirrored[:h, :w] = x[:h, :w][:, ::-1]
        flipped = (expected + model.forward(mirrored)[:h, :w][:, ::-1]) * np.float32(0.5)
        np.testing.assert_array_equal(model._forward_processed(rgb, flip=True, with_guide=False)[0], flipped)


def test_masks_of_the_integer_stem_match_the_float_stem(float_stem_file: Path, u8_stem_file: Path) -> None:
    """The 7-bit stem moves a network's masks only near edges (real photos of each set; a binary
    network passes small changes on as flipped signs, so a few percent of a photo can move). On the
    validation sets the two score the same person IoU (weights/README.md)."""
    float_model, u8_model = load_model(float_stem_file), load_model(u8_stem_file)
    agree = [
        float(np.mean(float_model.predict(rgb) == u8_model.predict(rgb)))
        for rgb in (*photos("portraits", 4), *photos("ccp", 4), *photos("camvid", 2))
    ]
    assert min(agree) > 0.9 and np.mean(agree) > 0.97, agree


def test_file_rules(tmp_path: Path, u8_stem_file: Path) -> None:
    packed = gnpk.read_model(u8_stem_file)
    (index,) = [i for i, op in enumerate(packed.graph["ops"]) if op["op"] == "conv2d_u8"]
    weight = packed.graph["ops"][index]["weight"]

    def write(tensors: dict, ops_list: list | None = None) -> None:
        gnpk.write_model(
            tmp_path / "bad.gnpk",
            packed.model,
            {**packed.graph, "ops": ops_list or packed.graph["ops"]},
            tensors,
        )

    bad = dict(packed.tensors)
    bad[weight] = np.full_like(packed.tensors[weight], -65)
    with pytest.raises(gnpk.ModelFormatError, match="must lie in"):
        write(bad)
    bad[weight] = packed.tensors[weight].astype(np.float32)
    with pytest.raises(gnpk.ModelFormatError, match="dtype"):
        write(bad)
    short = [dict(op) for op in packed.graph["ops"]]
    short[index]["pixel_zero"] = short[index]["pixel_zero"][:2]
    with pytest.raises(gnpk.ModelFormatError, match="pixel_zero"):
        write(dict(packed.tensors), short)
    # a file that says version 2 but holds a conv2d_u8 is refused (rewrite the version, re-sign)
    raw = u8_stem_file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["format_version"] = "2"
    text = json.dumps(header).encode()
    (tmp_path / "v2.gnpk").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(gnpk.ModelFormatError, match="version 3"):
        gnpk.read_model(tmp_path / "v2.gnpk")


def test_rewrite_refuses_a_graph_without_a_float_stem(u8_stem_file: Path) -> None:
    packed = gnpk.read_model(u8_stem_file)
    with pytest.raises(ExportError, match="float conv2d"):
        integer_stem(packed.graph, dict(packed.tensors), [0.5] * 3, [0.25] * 3)


def test_export_from_a_model_and_from_the_command_line(tmp_path: Path, packed_model_path: Path) -> None:
    """``export_model(..., stem_u8=True)`` from a PyTorch model and ``export-model --repack --stem-u8``
    write the same integer stem; a file that already has one is refused with a one-line error."""
    import torch

    from seg_training.export import export_model, main
    from seg_training.models import create_model

    torch.manual_seed(0)
    model = create_model(num_classes=2, k=2, width=0.25, head_channels=32, head="aspp").eval()
    export_model(model, tmp_path / "float.gnpk", name="tiny")
    export_model(model, tmp_path / "direct.gnpk", name="tiny", stem_u8=True)
    assert (
        main(["--repack", str(tmp_path / "float.gnpk"), "--out", str(tmp_path / "cli.gnpk"), "--stem-u8"])
        == 0
    )
    direct, cli = gnpk.read_model(tmp_path / "direct.gnpk"), gnpk.read_model(tmp_path / "cli.gnpk")
    assert direct.metadata["format_version"] == cli.metadata["format_version"] == "3"
    assert direct.graph == cli.graph
    for name, tensor in direct.tensors.items():
        np.testing.assert_array_equal(tensor, cli.tensors[name])
    assert load_model(tmp_path / "direct.gnpk").predict(photos("portraits", 1)[0]).shape == (512, 384)
    assert (
        main(["--repack", str(tmp_path / "cli.gnpk"), "--out", str(tmp_path / "again.gnpk"), "--stem-u8"])
        == 2
    )
