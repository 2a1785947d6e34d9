"""PackedModel: loading, pre/post-processing and the graph executor, on a hand-written graph (no torch)."""

from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service import kernels
from seg_service.kernels import reference
from seg_service.runtime import PackedModel, load_model, ops, resize_area, resize_nearest

from .test_format import tiny_model

cv2 = pytest.importorskip("cv2")
DATA = Path(__file__).resolve().parents[1] / "data"


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture()
def tiny(tmp_path) -> PackedModel:
    path = tmp_path / "tiny.gnpk"
    gnpk.write_model(path, *tiny_model())
    return load_model(path)


def expected_forward(x: np.ndarray) -> np.ndarray:
    """The tiny graph computed by hand with the numpy kernel reference."""
    _, _, t = tiny_model()
    dots = reference.bconv2d_int(reference.pack_bits(x), t["b.weight"], 3, 2, 1, 1).astype(np.float32)
    b = t["b.mul"] * np.maximum(dots, 0) + t["b.bias"]
    c = ops.conv2d(b, t["cls.weight"], t["cls.bias"])
    return ops.upsample_bilinear(c, x.shape[0], x.shape[1])


def test_attributes(tiny):
    assert tiny.name == "tiny" and tiny.arch == "handmade"
    assert tiny.classes == ["background", "thing"] and tiny.num_classes == 2
    assert tiny.palette.dtype == np.uint8 and tiny.palette.shape == (2, 3)
    assert tiny.input_spec["size_divisor"] == 8 and tiny.input_spec["max_side"] == 64
    assert tiny.file_size == Path(tiny.path).stat().st_size and len(tiny.checksum) == 64


@pytest.mark.parametrize("h, w", [(16, 24), (13, 21)])
def test_forward_matches_hand_computation(tiny, h, w):
    x = np.random.default_rng(h).standard_normal((h, w, 3)).astype(np.float32)
    np.testing.assert_allclose(tiny.forward(x), expected_forward(x), rtol=1e-5, atol=1e-5)


def test_preprocess_normalises_and_pads(tiny):
    rgb = read_rgb(DATA / "camvid/images/0016E5_01470.jpg")[:37, :50]  # smaller than max_side, odd size
    x, (h, w) = tiny.preprocess(rgb)
    assert (h, w) == (37, 50) and x.shape == (40, 56, 3)
    np.testing.assert_allclose(x[:37, :50], (rgb / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    assert not x[37:].any() and not x[:, 50:].any()


def test_predict_small_image(tiny):
    rgb = read_rgb(DATA / "ccp/images/0001.jpg")[:45, :30]
    mask = tiny.predict(rgb)
    assert mask.shape == (45, 30) and mask.dtype == np.uint8
    x, _ = tiny.preprocess(rgb)
    np.testing.assert_array_equal(mask, expected_forward(x)[:45, :30].argmax(axis=2))
    assert set(np.unique(mask)) <= {0, 1}


def test_predict_resizes_large_images_and_restores_size(tiny):
    rgb = read_rgb(DATA / "ccp/images/0002.jpg")  # long side > max_side (64)
    h, w = rgb.shape[:2]
    ph, pw = tiny.processed_size(h, w)
    assert max(ph, pw) == 64
    mask = tiny.predict(rgb)
    assert mask.shape == (h, w)
    x, _ = tiny.preprocess(rgb)
    small = expected_forward(x)[:ph, :pw].argmax(axis=2).astype(np.uint8)
    np.testing.assert_array_equal(mask, resize_nearest(small, h, w))
    logits = tiny.predict_logits(rgb)
    assert logits.shape == (h, w, 2) and logits.dtype == np.float32


def test_predict_rejects_bad_images(tiny):
    with pytest.raises(ValueError, match="RGB uint8"):
        tiny.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="RGB uint8"):
        tiny.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        tiny.forward(np.zeros((8, 8, 4), np.float32))


@pytest.mark.parametrize("src, dst", [((480, 640), (192, 256)), ((101, 333), (37, 100)), ((50, 50), (7, 7))])
def test_resize_area_matches_opencv_and_its_numpy_definition(src, dst):
    img = np.random.default_rng(0).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    ours = resize_area(img, *dst)
    theirs = cv2.resize(img.astype(np.float32), (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ours, theirs, atol=1e-2)
    # the C++ kernel equals kernels.reference.resize_area bit for bit, from uint8 and from float32
    np.testing.assert_array_equal(ours, reference.resize_area(img, *dst, chunk_rows=64))
    as_float = img.astype(np.float32) / 7.0
    np.testing.assert_array_equal(resize_area(as_float, *dst), reference.resize_area(as_float, *dst))


@pytest.mark.parametrize(
    "src, dst, c", [((1, 1), (1, 1), 1), ((5, 3), (5, 3), 2), ((9, 7), (2, 3), 5), ((20, 10), (40, 30), 1)]
)
def test_resize_area_edge_sizes_equal_the_definition(src, dst, c):
    x = np.random.default_rng(1).random((*src, c), dtype=np.float32)
    np.testing.assert_array_equal(resize_area(x, *dst), reference.resize_area(x, *dst))


def test_resize_area_rejects_bad_input():
    with pytest.raises(ValueError, match="output size must be positive"):
        resize_area(np.zeros((4, 4, 3), np.uint8), 0, 2)
    with pytest.raises(ValueError, match="dtype float32"):
        kernels.resize_area(np.zeros((4, 4, 3), np.int16), 2, 2)
    with pytest.raises(ValueError, match="3 dimensions"):
        kernels.resize_area(np.zeros((4, 4), np.uint8), 2, 2)


@pytest.mark.parametrize(
    "src, dst",
    [
        ((24, 32), (240, 320)),
        ((37, 50), (100, 133)),
        ((64, 48), (17, 13)),
        ((240, 320), (480, 640)),
        ((1, 1), (3, 2)),
    ],
)
def test_resize_nearest_samples_pixel_centres(src, dst):
    mask = np.random.default_rng(1).integers(0, 255, size=src, dtype=np.uint8)
    theirs = cv2.resize(mask, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(resize_nearest(mask, *dst), theirs)


def test_class_count_must_match_graph(tmp_path):
    model, graph, tensors = tiny_model()
    model["classes"].append("extra")
    model["palette"].append([1, 2, 3])
    gnpk.write_model(tmp_path / "bad.gnpk", model, graph, tensors)
    with pytest.raises(gnpk.ModelFormatError, match="outputs 2 channels but the model lists 3 classes"):
        load_model(tmp_path / "bad.gnpk")


def test_flip_averages_the_mirrored_pass(tiny):
    """predict(flip=True): the logits of the image and of its mirror (mirrored back), averaged; the
    mask is their argmax, also when the image is resized and padded first."""
    rgb = read_rgb(DATA / "camvid/images/0016E5_01470.jpg")
    small = np.ascontiguousarray(rgb[:37, :50])  # below max_side: no resize
    mirrored_back = tiny.predict_logits(np.ascontiguousarray(small[:, ::-1]))[:, ::-1]
    np.testing.assert_allclose(
        tiny.predict_logits(small, flip=True),
        (tiny.predict_logits(small) + mirrored_back) * 0.5,
        rtol=1e-6,
        atol=1e-6,
    )
    # A large photo: resized to max_side, padded, then both passes on the same resized pixels.
    x, (h, w) = tiny.preprocess(rgb)
    mirror = np.zeros_like(x)
    mirror[:h, :w] = x[:h, :w][:, ::-1]
    averaged = (tiny.forward(x)[:h, :w] + tiny.forward(mirror)[:h, :w][:, ::-1]) * np.float32(0.5)
    expected_mask = resize_nearest(np.argmax(averaged, axis=2).astype(np.uint8), *rgb.shape[:2])
    mask = tiny.predict(rgb, flip=True)
    assert np.array_equal(mask, expected_mask)
    assert not np.array_equal(mask, tiny.predict(rgb))
    logits = tiny.predict_logits(rgb, flip=True)
    np.testing.assert_allclose(
        logits, ops.upsample_bilinear(np.ascontiguousarray(averaged), *rgb.shape[:2]), rtol=1e-5, atol=1e-5
    )


def expected_multiscale(model: PackedModel, rgb: np.ndarray, scales: list[float], flip: bool) -> np.ndarray:
    """docs/format.md's test-time augmentation from its definition, with the numpy kernel reference:
    for an image below max_side, at each scale s the image resized to round(h * s) x round(w * s)
    (area down, bilinear up), normalised, padded, run (and mirrored, run, mirrored back), its
    logits resized bilinearly to h x w; the mean of all passes."""
    h, w = rgb.shape[:2]
    total = np.zeros((h, w, model.num_classes), np.float64)
    for s in scales:
        hs, ws = round(h * s), round(w * s)
        if s == 1.0:
            image = rgb.astype(np.float32)
        elif hs * ws <= h * w:
            image = reference.resize_area(rgb, hs, ws)
        else:
            image = reference.upsample_bilinear(rgb.astype(np.float32), hs, ws)
        x = np.zeros((-(-hs // 8) * 8, -(-ws // 8) * 8, 3), np.float32)
        x[:hs, :ws] = (image / np.float32(255.0) - np.float32(0.5)) / np.float32(0.25)
        passes = [expected_forward(x)[:hs, :ws]]
        if flip:
            mirror = np.zeros_like(x)
            mirror[:hs, :ws] = x[:hs, :ws][:, ::-1]
            passes.append(expected_forward(mirror)[:hs, :ws][:, ::-1])
        for logits in passes:
            total += reference.upsample_bilinear(np.ascontiguousarray(logits), h, w)
    return (total / (len(scales) * (2 if flip else 1))).astype(np.float32)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scales", [[0.75, 1.0, 1.5], [0.5, 1.25], [1.0]])
def test_multiscale_matches_its_definition(tiny, scales, flip):
    rgb = read_rgb(DATA / "camvid/images/0016E5_01470.jpg")[100:137, 200:250]  # 37x50, below max_side
    got = tiny.predict_logits(np.ascontiguousarray(rgb), flip=flip, scales=scales)
    np.testing.assert_allclose(got, expected_multiscale(tiny, rgb, scales, flip), rtol=1e-4, atol=1e-4)
    assert tiny.augmentation(flip, scales).passes == len(scales) * (2 if flip else 1)


def test_stored_test_time_is_the_default(tmp_path, tiny):
    """A file's test_time is what predict runs unless flip / scales say otherwise; bad scales are a
    ValueError naming them."""
    model, graph, tensors = tiny_model()
    spec = {"flip": True, "scales": [0.75, 1.0]}
    gnpk.write_model(tmp_path / "tta.gnpk", dict(model, test_time=spec), graph, tensors)
    tta = load_model(tmp_path / "tta.gnpk")
    assert tta.test_time == gnpk.Augmentation(flip=True, scales=(0.75, 1.0)) and tta.test_time.passes == 4
    assert tiny.test_time == gnpk.SINGLE_PASS and tiny.augmentation() == gnpk.SINGLE_PASS
    rgb = read_rgb(DATA / "camvid/images/0016E5_01470.jpg")  # resized to max_side first
    assert np.array_equal(tta.predict(rgb), tiny.predict(rgb, flip=True, scales=[0.75, 1.0]))
    assert not np.array_equal(tta.predict(rgb), tiny.predict(rgb))
    assert np.array_equal(tta.predict(rgb, flip=False, scales=[1.0]), tiny.predict(rgb))
    assert np.array_equal(tta.predict(rgb, flip=False), tiny.predict(rgb, scales=[0.75, 1.0]))
    np.testing.assert_array_equal(tta.predict_logits(rgb, scales=[1.0]), tiny.predict_logits(rgb, flip=True))
    with pytest.raises(ValueError, match="from 0.25 to 2.0"):
        tta.predict(rgb, scales=[3.0])
