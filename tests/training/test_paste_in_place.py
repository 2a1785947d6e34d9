"""Pasting thin and rare street objects (pole, sign, bicyclist) from other CamVid frames at their own
place (``data.paste_in_place``, copy_paste.PasteInPlace). Real CamVid frames and masks from
tests/data/camvid."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("albumentations")
import cv2  # noqa: E402
from train_helpers import TEST_DATA  # noqa: E402

from seg_training.data import InputError, build_seg_dataset, read_image, read_mask  # noqa: E402
from seg_training.data.copy_paste import CopyPaste, PasteInPlace  # noqa: E402
from seg_training.engine.config import load_config  # noqa: E402

CAMVID = TEST_DATA / "camvid"
CONFIG = TEST_DATA.parents[1] / "seg_training/configs/camvid_k2os32.yaml"
POLE, SIGN, PEDESTRIAN, BICYCLIST = 2, 6, 9, 10


def frame(stem: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image(CAMVID / f"images/{stem}.jpg"), read_mask(CAMVID / f"masks/{stem}.png")


def pieces(labels: np.ndarray, cls: int, min_pixels: int) -> np.ndarray:
    """Every connected object of ``cls`` of at least ``min_pixels`` pixels, recomputed here."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        (labels == cls).astype(np.uint8), connectivity=8
    )
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]
    return np.isin(components, keep)


def test_objects_land_where_they_stand_in_their_own_frame():
    """No shift, every object kept: the changed labels are exactly the source's poles (of 16 pixels
    or more), in place or mirrored with the frame, and the image changes only on and next to them."""
    image, mask = frame("0016E5_07959")
    src_image, src_mask = frame("0006R0_f02040")
    paste = PasteInPlace(1.0, [POLE], max_sources=1, keep=1.0, max_shift=0.0)
    poles = pieces(src_mask, POLE, 16)
    assert poles.sum() > 1000  # the source has real poles to give
    seen_mirrored = seen_plain = False
    for seed in range(6):
        out_image, out_mask = paste(
            image, mask, np.random.default_rng(seed), lambda i: (src_image, src_mask), 2
        )
        mirrored = np.array_equal(out_mask[poles[:, ::-1]], np.full(poles.sum(), POLE))
        placed = poles[:, ::-1] if mirrored else poles
        seen_mirrored |= mirrored
        seen_plain |= not mirrored
        assert np.all(out_mask[placed] == POLE)
        assert np.array_equal(out_mask[~placed], mask[~placed])
        # where the source's pole pixels sit, the image now shows them (the alpha is 1 inside wide
        # objects; at least the pixels whose 3x3 neighbourhood is all pole)
        core = cv2.erode(placed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        source = src_image[:, ::-1] if mirrored else src_image
        assert core.any() and np.abs(out_image[core].astype(int) - source[core]).max() <= 1
        near = cv2.dilate(placed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.array_equal(out_image[~near], image[~near])
    assert seen_mirrored and seen_plain
    # the inputs themselves are untouched
    assert np.array_equal(mask, read_mask(CAMVID / "masks/0016E5_07959.png"))


def test_shift_moves_objects_sideways_within_the_limit():
    image, mask = frame("0016E5_07959")
    src_image, src_mask = frame("0006R0_f02040")
    poles = pieces(src_mask, POLE, 16)
    paste = PasteInPlace(1.0, [POLE], max_sources=1, keep=1.0, max_shift=0.05)
    limit = int(0.05 * mask.shape[1])
    shifts = set()
    for seed in range(8):
        _, out_mask = paste(image, mask, np.random.default_rng(seed), lambda i: (src_image, src_mask), 2)
        changed = (out_mask == POLE) & (mask != POLE)
        found = None
        for flipped in (poles, poles[:, ::-1]):
            for shift in range(-limit, limit + 1):
                moved = np.roll(flipped, shift, axis=1)
                moved[:, : max(shift, 0)] = False
                if shift < 0:
                    moved[:, shift:] = False
                if np.all(out_mask[moved] == POLE) and not np.any(changed & ~moved):
                    found = shift
                    break
            if found is not None:
                break
        assert found is not None, f"seed {seed}: pasted poles are not the source's, shifted by <= {limit}"
        shifts.add(found)
    assert len(shifts) > 1


def test_keep_and_min_pixels_choose_objects():
    image, mask = frame("0016E5_01470")
    src_image, src_mask = frame("0016E5_08159")
    rng = np.random.default_rng(0)
    everything = PasteInPlace(1.0, [BICYCLIST, PEDESTRIAN], keep=1.0).objects(src_mask, rng)
    expected = pieces(src_mask, BICYCLIST, 16) | pieces(src_mask, PEDESTRIAN, 16)
    assert np.array_equal(everything, expected) and expected.any()
    assert not PasteInPlace(1.0, [BICYCLIST], keep=0.0).objects(src_mask, rng).any()
    assert not PasteInPlace(1.0, [BICYCLIST], keep=1.0, min_pixels=10**6).objects(src_mask, rng).any()
    half = [
        PasteInPlace(1.0, [POLE], keep=0.5).objects(src_mask, np.random.default_rng(s)).sum()
        for s in range(6)
    ]
    assert 0 < min(half) < max(half) < pieces(src_mask, POLE, 16).sum()


def test_more_mask_planes_travel_with_the_labels():
    """A teacher map (a second mask plane) takes the source's values under the pasted objects."""
    image, mask = frame("0016E5_07959")
    src_image, src_mask = frame("0006R0_f02040")
    planes = np.dstack([mask, np.full(mask.shape, 7, np.uint8)])
    src_planes = np.dstack([src_mask, np.full(mask.shape, 200, np.uint8)])
    paste = PasteInPlace(1.0, [POLE, SIGN], max_sources=1, keep=1.0, max_shift=0.0)
    _, out = paste(image, planes, np.random.default_rng(1), lambda i: (src_image, src_planes), 2)
    pasted = out[..., 1] == 200
    assert pasted.any() and np.all(np.isin(out[..., 0][pasted], [POLE, SIGN]))
    assert np.array_equal(out[..., 0][~pasted], mask[~pasted])
    assert np.all(out[..., 1][~pasted] == 7)


def test_frames_of_another_size_paste_at_the_same_relative_place():
    image, mask = frame("0016E5_07959")
    src_image, src_mask = frame("0006R0_f02040")
    small_image = cv2.resize(src_image, (240, 180), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(src_mask, (240, 180), interpolation=cv2.INTER_NEAREST)
    paste = PasteInPlace(1.0, [POLE], max_sources=1, keep=1.0, max_shift=0.0)
    out_image, out_mask = paste(image, mask, np.random.default_rng(0), lambda i: (small_image, small_mask), 2)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    expected = cv2.resize(small_mask, (480, 360), interpolation=cv2.INTER_NEAREST) == POLE
    changed = (out_mask == POLE) & (mask != POLE)
    assert changed.any()
    assert np.all(expected[changed] | expected[:, ::-1][changed])


def test_probability_zero_and_no_objects_change_nothing():
    image, mask = frame("0016E5_07959")
    source = frame("0006R0_f02040")
    same = PasteInPlace(0.0, [POLE])(image, mask, np.random.default_rng(0), lambda i: source, 2)
    assert same[0] is image and same[1] is mask
    empty = (source[0], np.zeros_like(source[1]))
    out_image, out_mask = PasteInPlace(1.0, [POLE])(image, mask, np.random.default_rng(0), lambda i: empty, 2)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    with pytest.raises(ValueError, match="probability"):
        PasteInPlace(1.5, [POLE])
    with pytest.raises(ValueError, match="at least one class"):
        PasteInPlace(0.5, [])


def camvid_config(**data: object) -> dict:
    overrides = [
        ("data.layout", "folder"),
        ("data.root", str(CAMVID)),
        ("data.train_split", "all"),
        ("data.val_split", "all"),
        ("data.check", False),
        *((f"data.{key}", value) for key, value in data.items()),
    ]
    return load_config("seg", CONFIG, overrides)


def test_config_builds_the_mix_and_samples_stay_reproducible():
    config = camvid_config(paste_in_place=["pole", "signsymbol", 10], paste_in_place_p=1.0)
    train = build_seg_dataset(config["data"], "train")
    assert isinstance(train.mix, PasteInPlace) and train.mix.classes == [POLE, SIGN, BICYCLIST]
    image, mask = train[(2, 4321)]
    again, again_mask = train[(2, 4321)]
    assert np.array_equal(image.numpy(), again.numpy()) and np.array_equal(mask.numpy(), again_mask.numpy())
    # without the mix the same sample differs (the paste did something)
    plain = build_seg_dataset(camvid_config()["data"], "train")
    assert plain.mix is None
    assert not np.array_equal(plain[(2, 4321)][1].numpy(), mask.numpy())
    # validation never pastes
    assert build_seg_dataset(config["data"], "val").mix is None
    # with copy-paste as well, both run, copy-paste first
    both = build_seg_dataset(camvid_config(paste_in_place=["pole"], copy_paste=0.5)["data"], "train")
    assert both.mix is not None and not isinstance(both.mix, (CopyPaste, PasteInPlace))
    # probability 0 turns it off
    assert (
        build_seg_dataset(camvid_config(paste_in_place=["pole"], paste_in_place_p=0.0)["data"], "train").mix
        is None
    )


def test_unknown_class_is_a_clear_error():
    config = camvid_config(paste_in_place=["lamppost"])
    with pytest.raises(InputError, match="unknown class 'lamppost'.*sky, building, pole"):
        build_seg_dataset(config["data"], "train")


def test_a_comma_list_names_the_classes_and_a_bad_probability_is_a_clear_error():
    train = build_seg_dataset(camvid_config(paste_in_place="pole, bicyclist")["data"], "train")
    assert isinstance(train.mix, PasteInPlace) and train.mix.classes == [POLE, BICYCLIST]
    with pytest.raises(InputError, match=r"data.paste_in_place_p must be in \[0, 1\], got 1.5"):
        build_seg_dataset(camvid_config(paste_in_place=["pole"], paste_in_place_p=1.5)["data"], "train")
