"""PackedModel.predict of the shipped models on real photos gives the masks of the numpy pipeline
around the network that the kernels replaced: the input normalisation, the guide, the two-class
filter's source, the scores and their argmax in numpy, the area resize and the guided filter's
full-resolution step from ``kernels.reference``. Photos at their size (larger than max_side: area
resize), at the model's size, and cropped to an odd size (padding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_service import kernels
from seg_service.kernels import reference
from seg_service.runtime import PackedModel, load_model, resize_nearest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
Image = pytest.importorskip("PIL.Image")


def numpy_mask(model: PackedModel, rgb: np.ndarray, coefficients=kernels.guided_coefficients) -> np.ndarray:
    """predict's mask the way the runtime computed it before the kernels (only the network and the
    guided filter's coefficients, ``coefficients``, are not numpy)."""
    h, w = model.processed_size(*rgb.shape[:2])
    image = rgb.astype(np.float32) if (h, w) == rgb.shape[:2] else reference.resize_area(rgb, h, w)
    guide_image = image
    if model._pixel_pad is not None:  # an integer stem reads the resized image rounded to u8 pixels
        image = np.rint(image)
    div = model.size_divisor
    x = np.zeros((-(-h // div) * div, -(-w // div) * div, 3), dtype=np.float32)
    inner = x[:h, :w]
    np.multiply(image, model._scale, out=inner)
    inner += model._offset
    logits = np.ascontiguousarray(model.forward(x)[:h, :w])
    spec = model.postprocess
    bias = np.asarray(spec.get("logit_bias") or [0.0] * model.num_classes, dtype=np.float32)
    gf = spec.get("guided_filter")
    if gf:
        assert model.num_classes == 2, "the shipped filtered model is the two-class one"
        guide = np.clip(guide_image * np.float32(1.0 / 255.0), 0.0, 1.0)
        source = np.clip((logits[..., 1:] - logits[..., :1]) * np.float32(0.5), -gf["clip"], gf["clip"])
        low_h, low_w = -(-h // gf["subsample"]), -(-w // gf["subsample"])
        a, b = coefficients(
            reference.resize_area(guide, low_h, low_w),
            reference.resize_area(source, low_h, low_w),
            max(1, round(gf["radius"] / gf["subsample"])),
            gf["eps"],
        )
        scores = reference.guided_apply(a, b, guide, [0, 0], [-1.0, 1.0], [float(v) for v in bias])
    else:
        scores = logits + bias
    mask = np.argmax(scores, axis=2).astype(np.uint8)
    return mask if mask.shape == rgb.shape[:2] else resize_nearest(mask, *rgb.shape[:2])


def photos(folder: str, count: int) -> list[np.ndarray]:
    paths = sorted((DATA / folder / "images").glob("*.jpg"))[:count]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def shipped_model(name: str) -> PackedModel:
    path = ROOT / "weights" / f"{name}.gnpk"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return load_model(path)


@pytest.fixture(scope="module", params=["person", "camvid"])
def shipped(request) -> PackedModel:
    return shipped_model(request.param)


# One pass: the numpy pipeline is the single-pass definition (a stored test_time's passes are
# checked against their definition in test_model.py).
ONE_PASS = {"flip": False, "scales": [1.0]}


def test_predict_gives_the_numpy_pipelines_masks(shipped: PackedModel) -> None:
    folders = ["portraits", "ccp"] if shipped.name == "person" else ["camvid"]
    images = [rgb for folder in folders for rgb in photos(folder, 2)]
    side = shipped.max_side
    for rgb in images:
        larger = np.asarray(Image.fromarray(rgb).resize((side * 5 // 4, side * 15 // 16)))
        at_size = np.asarray(Image.fromarray(rgb).resize((side, side * 3 // 4)))
        for image in (rgb, larger, at_size, np.ascontiguousarray(rgb[:101, 7:84])):
            mask = shipped.predict(image, **ONE_PASS)
            assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, numpy_mask(shipped, image))


def test_filtered_masks_barely_depend_on_the_coefficients_precision() -> None:
    """The float32 numpy definition of the coefficients moves the person model's mask by a few
    pixels at most (the kernel sums in double)."""
    model = shipped_model("person")
    for rgb in photos("portraits", 2) + photos("ccp", 2):
        changed = (
            model.predict(rgb, **ONE_PASS) != numpy_mask(model, rgb, reference.guided_coefficients)
        ).mean()
        assert changed < 1e-4


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 16), (32, 32), (31, 200)])
def test_predict_on_images_no_larger_than_the_network_stride(shipped: PackedModel, size) -> None:
    """An image that pads to one output-stride cell or one row of cells (person's stride is 32)
    still gets a mask, the numpy pipeline's: the ASPP head's 1x1 branches used to stop predict."""
    folder = "portraits" if shipped.name == "person" else "camvid"
    rgb = np.ascontiguousarray(photos(folder, 1)[0][100 : 100 + size[0], 100 : 100 + size[1]])
    mask = shipped.predict(rgb, **ONE_PASS)
    assert mask.shape == size and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, numpy_mask(shipped, rgb))
    assert shipped.predict(rgb, flip=True, refine=False).shape == size
    assert shipped.predict(rgb, flip=True, scales=[0.5, 1.0, 2.0]).shape == size
