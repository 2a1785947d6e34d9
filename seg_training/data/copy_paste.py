"""Copy-paste compositing (Ghiasi et al. 2021, "Simple Copy-Paste"): paste the labelled objects of
one training image into another.

For a person model this is how a few thousand labelled photos teach "a person on any background":
people cut from portraits land on street scenes and vice versa, at scales from a face filling the
frame to a small full body, sometimes cut by the frame edge, several to an image. The pasted
image pixels are blended through a slightly blurred alpha so the network cannot learn to find a
hard paste seam; the pasted mask is hard.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Loader = Callable[[int], tuple[np.ndarray, np.ndarray]]
# A mix: (image, mask, rng, load, size) -> (image, mask), run before augmentation (SegmentationDataset.mix).
Mix = Callable[..., tuple[np.ndarray, np.ndarray]]


class PasteFromOthers:
    """A mix that, with probability ``probability``, takes 1..``max_sources`` other samples of the
    data set and pastes something of each into the sample (``_paste``, in place on copies)."""

    def __init__(self, probability: float, max_sources: int) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"paste probability must be in [0, 1], got {probability}")
        self.probability = probability
        self.max_sources = max_sources

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, load: Loader, size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if size < 2 or rng.random() >= self.probability:
            return image, mask
        image, mask = image.copy(), mask.copy()
        for _ in range(int(rng.integers(1, self.max_sources + 1))):
            src_image, src_mask = load(int(rng.integers(size)))
            self._paste(image, mask, src_image, src_mask, rng)
        return image, mask

    def _paste(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        src_image: np.ndarray,
        src_mask: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        raise NotImplementedError


class CopyPaste(PasteFromOthers):
    """With probability ``probability``, paste 1..``max_objects`` cut-outs of class ``label`` from
    other samples of the data set into the sample.

    Each cut-out is the bounding box of the label in its source image, scaled so its height is a
    fraction ``scale`` of the target's height (aspect kept), and placed at a random position that
    may run over the frame edge. Target pixels under the cut-out become ``label``; pixels the source
    marks as ignore stay as they were. A mask may carry more planes ([H, W, C], the labels first:
    a teacher map, SegmentationDataset.load_with_teacher): each takes the source's values under the
    cut-out.
    """

    def __init__(
        self,
        probability: float,
        label: int = 1,
        scale: tuple[float, float] = (0.3, 1.1),
        max_objects: int = 2,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(probability, max_objects)
        self.label = label
        self.scale = scale
        self.ignore_index = ignore_index

    def _paste(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        src_image: np.ndarray,
        src_mask: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        labels = src_mask[..., 0] if src_mask.ndim == 3 else src_mask
        ys, xs = np.nonzero(labels == self.label)
        if len(ys) < 64:  # no object worth pasting in this source
            return
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h, w = image.shape[:2]
        out_h = max(8, int(h * rng.uniform(*self.scale)))
        out_w = max(8, int(round((x1 - x0) * out_h / (y1 - y0))))
        if out_w > 2 * w:
            return
        if rng.random() < 0.5:  # mirror the cut-out
            src_image, src_mask = src_image[:, ::-1], src_mask[:, ::-1]
            x0, x1 = src_image.shape[1] - x1, src_image.shape[1] - x0
        cut = cv2.resize(
            np.ascontiguousarray(src_image[y0:y1, x0:x1]), (out_w, out_h), interpolation=cv2.INTER_AREA
        )
        # nearest neighbour: the label (and teacher) values of the source, at the cut-out's size
        cut_mask = cv2.resize(
            np.ascontiguousarray(src_mask[y0:y1, x0:x1]), (out_w, out_h), interpolation=cv2.INTER_NEAREST
        ).reshape(out_h, out_w, *src_mask.shape[2:])
        obj = ((cut_mask[..., 0] if cut_mask.ndim == 3 else cut_mask) == self.label).astype(np.uint8)
        # Anywhere from flush with an edge to half outside the frame, so people cut by the frame appear.
        top = int(rng.integers(-out_h // 3, max(1, h - out_h // 2)))
        left = int(rng.integers(-out_w // 2, max(1, w - out_w // 2)))
        ty0, ty1, tx0, tx1 = max(0, top), min(h, top + out_h), max(0, left), min(w, left + out_w)
        if ty1 <= ty0 or tx1 <= tx0:
            return
        sy0, sx0 = ty0 - top, tx0 - left
        obj = obj[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        cut = cut[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        cut_mask = cut_mask[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        alpha = cv2.GaussianBlur(obj.astype(np.float32), (5, 5), 0)[..., None]
        region = image[ty0:ty1, tx0:tx1]
        region[:] = (alpha * cut + (1.0 - alpha) * region + 0.5).astype(np.uint8)
        mask[ty0:ty1, tx0:tx1][obj > 0] = cut_mask[obj > 0]


class PasteInPlace(PasteFromOthers):
    """With probability ``probability``, paste the objects of ``classes`` from 1..``max_sources``
    other training frames into the sample *where they stand in their own frame* (shifted sideways by
    at most ``max_shift`` of the width, the source mirrored half of the time).

    For data from one fixed, forward-looking camera (CamVid's street drives) an object's place in the
    frame goes with its size and perspective: a pole 40 pixels from the left edge at that height is a
    pole on a pavement in any frame of the drive, so pasting it there needs no scaling. Thin and rare
    classes (pole, sign, bicyclist) are what a street model sees least and loses first; this shows it
    more of them, on other backgrounds. Each connected object of those classes is taken with
    probability ``keep``; objects under ``min_pixels`` are left out. The alpha is blurred by a 3x3
    kernel only (a wider blur would fade a pole two pixels wide); the pasted labels are hard. A mask
    with more planes ([H, W, C], labels first) takes the source's values of every plane.
    """

    def __init__(
        self,
        probability: float,
        classes: list[int],
        max_sources: int = 2,
        keep: float = 0.7,
        max_shift: float = 0.1,
        min_pixels: int = 16,
    ) -> None:
        super().__init__(probability, max_sources)
        if not classes:
            raise ValueError("paste in place needs at least one class")
        self.classes = [int(c) for c in classes]
        self.keep = keep
        self.max_shift = max_shift
        self.min_pixels = min_pixels

    def objects(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean map of the objects taken from a source's labels."""
        taken = np.zeros(labels.shape, bool)
        for cls in self.classes:
            count, components, stats, _ = cv2.connectedComponentsWithStats(
                (labels == cls).astype(np.uint8), connectivity=8
            )
            for i in range(1, count):
                if stats[i, cv2.CC_STAT_AREA] >= self.min_pixels and rng.random() < self.keep:
                    taken |= components == i
        return taken

    def _paste(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        src_image: np.ndarray,
        src_mask: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        h, w = image.shape[:2]
        if src_image.shape[:2] != (h, w):  # frames of another size: the same place, relatively
            src_image = cv2.resize(src_image, (w, h), interpolation=cv2.INTER_LINEAR)
            src_mask = cv2.resize(src_mask, (w, h), interpolation=cv2.INTER_NEAREST).reshape(
                h, w, *src_mask.shape[2:]
            )
        if rng.random() < 0.5:
            src_image, src_mask = src_image[:, ::-1], src_mask[:, ::-1]
        labels = src_mask[..., 0] if src_mask.ndim == 3 else src_mask
        obj = self.objects(labels, rng)
        limit = int(self.max_shift * w)
        shift = int(rng.integers(-limit, limit + 1)) if limit > 0 else 0
        if shift:  # move the source sideways; columns that come in from outside hold no object
            src_image, src_mask, obj = (np.roll(a, shift, axis=1) for a in (src_image, src_mask, obj))
            if shift > 0:
                obj[:, :shift] = False
            else:
                obj[:, shift:] = False
        if not obj.any():
            return
        alpha = cv2.GaussianBlur(obj.astype(np.float32), (3, 3), 0)
        near = alpha > 0  # the objects and their blurred rim: the rest of the frame stays as it is
        a = alpha[near][:, None]
        image[near] = (a * src_image[near] + (1.0 - a) * image[near] + 0.5).astype(np.uint8)
        mask[obj] = src_mask[obj]


def chain(*mixes: Mix) -> Mix:
    """One mix that applies ``mixes`` in turn (SegmentationDataset.mix takes one)."""

    def run(
        image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, load: Loader, size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        for mix in mixes:
            image, mask = mix(image, mask, rng, load, size)
        return image, mask

    return run
