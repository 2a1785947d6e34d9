"""Soft masks (alpha matte, probability) from a model's scores, on the shipped person model and a real
photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_service.runtime import load_model
from seg_service.runtime.softmask import (
    MATTE_RAMP_LOGITS,
    matte_from_scores,
    resolve_foreground,
    soft_mask,
    softmax,
)

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "tests" / "data" / "portraits" / "images" / "00001.jpg"
PERSON_MODEL = ROOT / "weights" / "person.gnpk"


def test_softmax_is_stable_and_sums_to_one():
    scores = np.array([[[1000.0, 0.0, -1000.0], [3.0, 3.0, 3.0]]], dtype=np.float32)
    p = softmax(scores)
    assert np.allclose(p.sum(axis=-1), 1.0) and np.isfinite(p).all()
    assert np.allclose(p[0, 0], [1.0, 0.0, 0.0]) and np.allclose(p[0, 1], 1 / 3)


def test_matte_ramp_over_the_score_margin():
    """Alpha 0.5 on the decision boundary, 0 and 1 from MATTE_RAMP_LOGITS on, linear in between; with
    several classes the margin is the best foreground score against the best other one."""
    r = MATTE_RAMP_LOGITS
    margins = np.array([-10 * r, -r, -r / 2, 0, r / 2, r, 10 * r], dtype=np.float32)
    two_class = np.stack([np.zeros_like(margins), margins], axis=-1)[None]
    assert np.allclose(matte_from_scores(two_class, [1])[0], [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)
    # classes: 0 sky, 1 car, 2 pedestrian, 3 bicyclist; foreground pedestrian + bicyclist
    scores = np.array(
        [
            [
                [0.0, 3.0, 3.0 + r / 2, -5.0],  # pedestrian just beats the car: 0.75
                [0.0, 3.0, -5.0, 3.0 - r / 2],  # the car just beats the bicyclist: 0.25
                [9.0, 3.0, 1.0, 1.0],
            ]
        ],
        dtype=np.float32,
    )  # sky by far: 0
    assert np.allclose(matte_from_scores(scores, [2, 3])[0], [0.75, 0.25, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        matte_from_scores(scores, [0, 1, 2, 3])


def test_resolve_foreground_rules():
    assert resolve_foreground(["background", "person"], None) == [1]
    assert resolve_foreground(["a", "person", "b"], None) == [1]
    assert resolve_foreground(["bg", "cat"], None) == [1]  # two classes: class 1
    assert resolve_foreground(["sky", "car", "pedestrian"], ["pedestrian", "car"]) == [1, 2]
    with pytest.raises(ValueError, match="unknown foreground"):
        resolve_foreground(["bg", "person"], ["dog"])
    with pytest.raises(ValueError, match="name the foreground"):
        resolve_foreground(["sky", "car", "road"], None)


@pytest.fixture(scope="module")
def person_model():
    return load_model(PERSON_MODEL)


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.asarray(Image.open(PORTRAIT).convert("RGB"))


def test_probabilities_match_the_label_mask(person_model, portrait):
    """predict_probabilities is the softmax of predict_logits; the probability PNG of the person is over
    one half exactly where the label mask at the processed size says person."""
    probabilities = person_model.predict_probabilities(portrait)
    assert probabilities.shape == portrait.shape[:2] + (2,)
    assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    scores, guide = person_model.processed_scores(portrait)
    assert guide.shape == scores.shape[:2] + (3,) and 0 <= guide.min() and guide.max() <= 1
    labels = np.argmax(scores, axis=2)
    p = softmax(scores)[..., 1]
    clear = np.abs(scores[..., 1] - scores[..., 0]) > 1e-4  # float rounding decides exact near-ties
    assert np.array_equal((p > 0.5)[clear], (labels == 1)[clear])
    assert 0.05 < labels.mean() < 0.95  # a real portrait: both classes present


def test_alpha_is_the_ramp_of_the_score_margin(person_model, portrait):
    """For a two-class model the log-odds are the score difference: the matte is that margin through
    the ramp (no blur of a hard mask), 0 and 255 where the model is sure, and agrees with the labels."""
    scores, _ = person_model.processed_scores(portrait)
    alpha = soft_mask(scores, [1], "alpha")
    margin = scores[..., 1] - scores[..., 0]
    expected = np.clip((margin + MATTE_RAMP_LOGITS) / (2 * MATTE_RAMP_LOGITS), 0, 1) * 255
    assert np.abs(alpha.astype(np.float32) - expected).max() <= 1.0
    assert np.isin(alpha, (0, 255)).mean() > 0.3 and ((alpha > 0) & (alpha < 255)).any()
    labels = np.argmax(scores, axis=2)
    assert (labels[alpha == 255] == 1).all() and (labels[alpha == 0] == 0).all()
    full = soft_mask(scores, [1], "alpha", portrait.shape[:2])  # upsampled to the photo
    assert full.shape == portrait.shape[:2] and full.dtype == np.uint8


def test_probability_mask_is_round_255_p(person_model, portrait):
    scores, _ = person_model.processed_scores(portrait)
    probability = soft_mask(scores, [1], "probability")
    expected = np.round(softmax(scores)[..., 1] * 255).astype(np.uint8)
    assert np.abs(probability.astype(int) - expected).max() <= 1
    with pytest.raises(ValueError):
        soft_mask(scores, [1], "overlay")
