"""TemporalSmoother: flicker removed where the picture is still, no lag where it moves."""

from __future__ import annotations

import numpy as np
import pytest

from seg_service.runtime.temporal import SmootherSettings, TemporalSmoother, box_mean


@pytest.mark.parametrize("size", [1, 3, 5, 9, 11, 15])  # shifted sums up to 9, an integral image above
@pytest.mark.parametrize("shape", [(9, 13), (1, 1), (2, 31), (17, 3)])
def test_box_mean_matches_a_direct_window_mean(shape, size):
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    got = box_mean(x, size)
    assert got.shape == shape and got.dtype == np.float32
    r = size // 2
    for i in range(shape[0]):
        for j in range(shape[1]):
            expected = x[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].astype(np.float64).mean()
            assert got[i, j] == pytest.approx(expected, abs=1e-6)


def textured_background(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.8, size=(h, w, 3)).astype(np.float32)


def square_frame(
    background: np.ndarray, left: int, top: int = 20, side: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """A dark square on the background, and two-class scores that say 'square' exactly under it."""
    image = background.copy()
    image[top : top + side, left : left + side] = 0.02
    scores = np.zeros(image.shape[:2] + (2,), dtype=np.float32)
    scores[..., 0] = 1.0
    scores[top : top + side, left : left + side] = (-1.0, 1.0)
    return image, scores


def test_moving_object_is_followed_without_lag():
    """A square moving 6 px per frame: the smoothed mask is the frame's own mask at every frame."""
    background = textured_background(64, 160)
    smoother = TemporalSmoother()
    for step in range(15):
        image, scores = square_frame(background, left=5 + 6 * step)
        smoothed = smoother.update(scores, image)
        assert np.array_equal(np.argmax(smoothed, axis=2), np.argmax(scores, axis=2)), step
    assert smoother.resets == 0 and smoother.frames == 15


def test_flicker_on_a_still_picture_is_removed():
    """A still picture whose scores flip sign at random pixels in single frames (and camera noise on
    the picture): the plain labels flicker, the smoothed ones hold."""
    rng = np.random.default_rng(2)
    background = textured_background(64, 96)
    image, clean = square_frame(background, left=30)
    smoother = TemporalSmoother()
    plain_flips = smoothed_flips = 0
    previous_plain = previous_smoothed = None
    for _ in range(30):
        noisy_image = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)
        scores = clean.copy()
        flicker = rng.random(scores.shape[:2]) < 0.1  # 10 % of pixels say the other class this frame
        scores[flicker] = -scores[flicker] * 0.5
        plain = np.argmax(scores, axis=2)
        smoothed = np.argmax(smoother.update(scores, noisy_image), axis=2)
        if previous_plain is not None:
            plain_flips += int((plain != previous_plain).sum())
            smoothed_flips += int((smoothed != previous_smoothed).sum())
        previous_plain, previous_smoothed = plain, smoothed
    assert plain_flips > 0
    assert smoothed_flips < 0.05 * plain_flips, (plain_flips, smoothed_flips)
    # What is left wrong: pixels that said the other class three frames in a row (0.1 % per frame).
    assert (previous_smoothed != np.argmax(clean, axis=2)).mean() < 0.005


def test_identical_frames_give_identical_scores():
    """A still picture repeated: the average of equal scores is those scores, bit for bit."""
    image, scores = square_frame(textured_background(32, 48), left=10, top=4, side=12)
    scores = scores * np.float32(0.37) + np.float32(0.01)
    smoother = TemporalSmoother()
    for _ in range(5):
        assert np.array_equal(smoother.update(scores, image), scores)


def test_scene_cut_and_new_size_start_afresh():
    smoother = TemporalSmoother(SmootherSettings(min_weight=0.1))
    image, scores = square_frame(textured_background(40, 60, seed=3), left=5, top=5, side=10)
    smoother.update(scores, image)
    other_image, other_scores = square_frame(
        textured_background(40, 60, seed=4) * 0.2 + 0.8, left=40, top=20, side=10
    )
    assert np.array_equal(smoother.update(other_scores, other_image), other_scores)  # scene cut
    assert smoother.resets == 1
    small_image, small_scores = square_frame(textured_background(20, 30), left=2, top=2, side=5)
    assert np.array_equal(smoother.update(small_scores, small_image), small_scores)  # new size
    assert smoother.resets == 2
    with pytest.raises(ValueError):
        smoother.update(small_scores, small_image[:10])
    with pytest.raises(ValueError):
        TemporalSmoother(SmootherSettings(min_weight=0.0))
