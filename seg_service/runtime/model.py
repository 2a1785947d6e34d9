"""PackedModel: a loaded packed model with image pre- and post-processing (no torch)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seg_service import kernels
from seg_service.format import (
    Augmentation,
    ModelFormatError,
    PackedFile,
    augmentation_from_json,
    check_scales,
    infer_channels,
    read_model,
)
from seg_service.runtime.allocator import retain_freed_memory
from seg_service.runtime.executor import GraphExecutor, RunProfile
from seg_service.runtime.ops import image_pixels, upsample_bilinear
from seg_service.runtime.plan import Step, op_reads
from seg_service.runtime.refine import apply_postprocess
from seg_service.runtime.resize import resize_area, resize_nearest
from seg_service.runtime.threads import quiet_blas


class PackedModel:
    """A packed Group-Net segmentation model ready to run on the CPU.

    ``forward`` runs the raw graph on a normalised float image; ``predict`` / ``predict_logits``
    take an RGB uint8 image of any size and apply the model's input rules (docs/format.md).
    """

    def __init__(self, packed: PackedFile):
        self._packed = packed
        model = packed.model
        self.name: str = model["name"]
        self.arch: str = model["arch"]
        self.classes: list[str] = list(model["classes"])
        self.palette: np.ndarray = np.asarray(model["palette"], dtype=np.uint8).reshape(-1, 3)
        self.input_spec: dict[str, Any] = dict(model["input"])
        self.config: dict[str, Any] = dict(model.get("config", {}))
        # optional post-processing fitted for this model (refine.py); {} when the file has none
        self.postprocess: dict[str, Any] = dict(model.get("postprocess") or {})
        # the test-time augmentation predictions run with unless told otherwise (a single pass when
        # the file has none)
        self.test_time: Augmentation = augmentation_from_json(model.get("test_time"))
        self.checksum: str = packed.checksum
        self.file_size: int = packed.file_size
        self.path: str | None = packed.path
        self._mean = np.asarray(self.input_spec["mean"], dtype=np.float32)
        self._std = np.asarray(self.input_spec["std"], dtype=np.float32)
        self._scale = (1.0 / (255.0 * self._std)).astype(
            np.float32
        )  # (v / 255 - mean) / std = v * scale + offset
        self._offset = (-self._mean / self._std).astype(np.float32)
        self._executor = GraphExecutor(packed.graph, packed.tensors)
        if len(self._executor.inputs) != 1 or len(self._executor.outputs) != 1:
            raise ModelFormatError(
                f"{self.name}: a segmentation graph needs exactly one input and one output"
            )
        self._pixel_pad = self._pixel_padding(packed.graph)
        # Channel inference over the whole graph: every op gets the channels its tensors expect, and
        # the output has one channel per class.
        channels = infer_channels(packed.graph, packed.tensors, 3, self.name)[self._executor.outputs[0]]
        if channels != self.num_classes:
            raise ModelFormatError(
                f"{self.name}: the graph outputs {channels} channels but the model lists "
                f"{self.num_classes} classes"
            )

    def _pixel_padding(self, graph: Mapping[str, Any]) -> np.ndarray | None:
        """With an integer stem (``conv2d_u8``) as the input's only reader, ``predict`` hands it the
        image's u8 pixels instead of normalised floats, padded with the pixel value the stem reads
        for a normalised zero: this value per channel. None (floats) when the stem's pixel rules do
        not give back every u8 value of this model's normalisation, so both routes agree exactly."""
        name = self._executor.inputs[0]
        if name not in self._executor.pixel_inputs:
            return None
        stems = [op for op in graph["ops"] if op["op"] == "conv2d_u8" and name in op_reads(op)]
        rules = {(tuple(op["pixel_scale"]), tuple(op["pixel_zero"])) for op in stems}
        if len(rules) != 1:
            return None
        pixel_scale, pixel_zero = (np.asarray(v, dtype=np.float32) for v in rules.pop())
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # [256, 1, 3]
        normalised = (levels * self._scale + self._offset).astype(np.float32)
        if not np.array_equal(image_pixels(normalised, pixel_scale, pixel_zero), levels):
            return None
        return image_pixels(np.zeros((1, 1, 3), dtype=np.float32), pixel_scale, pixel_zero)[0, 0]

    def dry_run(self) -> None:
        """Segment a small blank image, with and without the post-processing: a graph that passes
        every static check can still fail on real sizes (mismatched feature maps at a join, a pooling
        window larger than its input), and such a file must be refused at load, not on each request."""
        div = self.size_divisor
        # Not a multiple of the divisor, not square, at most max_side: the padding path is exercised.
        h, w = min(self.max_side, div + 1), min(self.max_side, 2 * div + 3)
        rgb = np.full((h, w, 3), 128, dtype=np.uint8)
        # SEG_PROFILE's report is about the runs a user asked for, not this load-time check.
        env_profile, self._executor.profile = self._executor.profile, None
        try:
            for refine in (False, True):
                mask = self.predict(rgb, refine=refine)
                if mask.shape != (h, w) or mask.dtype != np.uint8 or int(mask.max()) >= self.num_classes:
                    raise ModelFormatError(
                        f"{self.name}: dry run gave a mask of shape {mask.shape}, dtype "
                        f"{mask.dtype}, for a {h}x{w} image with {self.num_classes} classes"
                    )
        finally:
            self._executor.profile = env_profile

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def max_side(self) -> int:
        return int(self.input_spec["max_side"])

    @property
    def size_divisor(self) -> int:
        return int(self.input_spec["size_divisor"])

    def __repr__(self) -> str:
        return (
            f"PackedModel(name={self.name!r}, arch={self.arch!r}, classes={self.num_classes}, "
            f"size={self.file_size} bytes)"
        )

    # ---- raw graph -------------------------------------------------------------------------

    def forward(self, x: np.ndarray, profile: RunProfile | None = None) -> np.ndarray:
        """Run the graph on a normalised image f32 [H, W, 3]; returns logits f32 [H, W, classes].

        With a ``RunProfile`` (``seg_service.runtime.RunProfile``), adds this run's time per step to it.
        """
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"forward expects a normalised image of shape [H, W, 3], got {x.shape}")
        out = self._executor.run({self._executor.inputs[0]: x}, profile=profile)
        return out[self._executor.outputs[0]]

    @property
    def steps(self) -> tuple[Step, ...]:
        """The planned steps of the graph, in run order (``seg_service.runtime.plan``): the fused
        units a profile times, each naming the ops it computes and the values it reads and writes."""
        return tuple(self._executor.steps)

    def forward_values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every value of one forward pass on a normalised image f32 [H, W, 3], by name: nothing is
        freed and every step writes its floats (fused steps too), for tools that check or time the
        steps one by one (``seg-bench ops``). Slower than ``forward``."""
        return self._executor.run({self._executor.inputs[0]: np.asarray(x)}, keep_all=True)

    # ---- images ----------------------------------------------------------------------------

    def processed_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the image is resized to before padding (long side at most max_side)."""
        long_side = max(height, width)
        if long_side <= self.max_side:
            return height, width
        scale = self.max_side / long_side
        return max(1, round(height * scale)), max(1, round(width * scale))

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB uint8 [H, W, 3] -> (normalised, padded float image, (h, w) before padding)."""
        x, size, _ = self._prepare(rgb, with_guide=False, pixels=False)
        return x, size

    def _prepare(
        self, rgb: np.ndarray, with_guide: bool, pixels: bool = True
    ) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """(normalised padded input, (h, w) after the input resize, and with ``with_guide`` the guided
        filter's guide: the resized image f32 [h, w, 3] scaled to [0, 1], else None). With ``pixels``
        and an integer stem, the input is the padded u8 image instead (the same network output)."""
        return self._network_input(self._processed_image(rgb), with_guide, pixels)

    def _processed_image(self, rgb: np.ndarray) -> np.ndarray:
        """The checked RGB u8 image after the input resize (itself when no resize is due, else the
        area resize's float32)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape [H, W, 3], got {rgb.dtype} {rgb.shape}")
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ValueError(f"image is empty: shape {rgb.shape}")
        h, w = self.processed_size(rgb.shape[0], rgb.shape[1])
        return rgb if (h, w) == rgb.shape[:2] else resize_area(rgb, h, w)

    def _network_input(
        self, image: np.ndarray, with_guide: bool, pixels: bool = True
    ) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """``_prepare`` after the input resize: ``image`` (u8, or the resize's float32) at the size
        the network sees. A float image may be rounded in place (integer stem)."""
        h, w = image.shape[:2]
        div = self.size_divisor
        ph, pw = -(-h // div) * div, -(-w // div) * div
        if self._pixel_pad is not None:
            # An integer stem reads u8 pixels. A resized image (fractional values) is rounded to
            # them first, on both routes, so forward() on preprocess()'s output gives predict's
            # logits exactly; its guide is taken before rounding, as with a float stem.
            guide = self._guide(image) if with_guide else None
            if image.dtype != np.uint8:
                image = np.rint(image, out=image).astype(np.uint8)  # area means of u8 lie in [0, 255]
            if not pixels:
                return kernels.normalize_image(image, self._scale, self._offset, ph, pw), (h, w), guide
            if (ph, pw) == (h, w) and image.flags.c_contiguous:
                return image, (h, w), guide  # nothing to pad: the stem reads the pixels as they are
            # no normalised copy at all: the stem gets the pixels, padded with its zero level
            padded = np.empty((ph, pw, 3), dtype=np.uint8)
            padded[:h, :w] = image
            padded[h:] = self._pixel_pad
            padded[:h, w:] = self._pixel_pad
            return padded, (h, w), guide
        # (v / 255 - mean) / std as v * scale + offset, written into the zero-padded input (and v / 255
        # into the guide) in one pass over the image: numpy's float copy and two stride-3 broadcasts
        # cost ten times more (kernels.reference.normalize_image is the same in numpy)
        if with_guide:
            x, guide = kernels.normalize_image(image, self._scale, self._offset, ph, pw, with_guide=True)
            return x, (h, w), guide
        return kernels.normalize_image(image, self._scale, self._offset, ph, pw), (h, w), None

    def _guide(self, image: np.ndarray) -> np.ndarray:
        return kernels.image_guide(image)

    def processed_logits(
        self, rgb: np.ndarray, flip: bool | None = None, scales: Sequence[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits f32 [h, w, classes] at the processed size (after the input resize, before any
        post-processing) and the resized image itself, f32 [h, w, 3] in [0, 1] (the guide of the
        model's guided filter). ``train-seg tune-postprocess`` fits the post-processing on these."""
        logits, guide = self._forward_processed(rgb, flip, with_guide=True, scales=scales)
        assert guide is not None
        return logits, guide

    def augmentation(self, flip: bool | None = None, scales: Sequence[float] | None = None) -> Augmentation:
        """The network passes of a prediction: the model's ``test_time`` (one pass when the file has
        none), with ``flip`` and ``scales`` replacing its parts where given."""
        default = self.test_time
        return Augmentation(
            flip=default.flip if flip is None else bool(flip),
            scales=default.scales if scales is None else check_scales(list(scales)),
        )

    def _passes(self, x: np.ndarray, h: int, w: int, flip: bool) -> np.ndarray:
        """Logits of one prepared input cropped to [h, w]; with ``flip`` plus those of the mirrored
        input, mirrored back (a sum of two passes)."""
        logits = self.forward(x)
        if not flip:
            return logits[:h, :w]
        # The mirror is taken after preprocessing so both passes see the same resized pixels.
        # Padding stays at the right and bottom, as for x: u8 pixels for an integer stem get its
        # zero level. Only the padding is filled (filling all of it first doubled the cost).
        mirrored = np.empty_like(x)
        pad = self._pixel_pad if x.dtype == np.uint8 else 0
        mirrored[h:] = pad
        mirrored[:h, w:] = pad
        mirrored[:h, :w] = x[:h, :w][:, ::-1]
        # logits[:h, :w] + the mirrored pass mirrored back, in one threaded pass (numpy's add of a
        # reversed view took 1.7 ms at 480x360x11, 3.4 at 720x540x11)
        return kernels.add_mirrored(logits, self.forward(mirrored), h, w)

    def _forward_processed(
        self, rgb: np.ndarray, flip: bool | None, with_guide: bool, scales: Sequence[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits cropped to the processed size, the guide when ``with_guide``, else None): the mean
        of the passes ``augmentation(flip, scales)`` names (docs/format.md, test-time augmentation)."""
        tta = self.augmentation(flip, scales)
        logits, guide = self._summed_passes(rgb, tta, with_guide)
        if tta.passes > 1:
            logits = logits * np.float32(1.0 / tta.passes)
        return np.ascontiguousarray(logits), guide

    def _summed_passes(
        self, rgb: np.ndarray, tta: Augmentation, with_guide: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The sum of the passes' logits over ``tta.scales`` at the processed size [h, w], and the guide.
        At scale s the resized image is resized again to round(h * s) x round(w * s) (area when
        smaller, bilinear when larger) and its logits resized back to [h, w] bilinearly; scale 1 is
        ``_prepare``'s input itself."""
        image = self._processed_image(rgb)
        h, w = image.shape[:2]
        guide = None
        # every scaled copy first: the scale-1 input may round a float image in place
        inputs: dict[float, tuple[np.ndarray, int, int]] = {}
        for s in tta.scales:
            if s == 1.0:
                continue
            hs, ws = max(1, round(h * s)), max(1, round(w * s))
            if hs * ws <= h * w:
                scaled = resize_area(image, hs, ws)
            else:
                scaled = upsample_bilinear(np.ascontiguousarray(image, dtype=np.float32), hs, ws)
            inputs[s] = (self._network_input(scaled, with_guide=False)[0], hs, ws)
        if 1.0 in tta.scales:
            x, _, guide = self._network_input(image, with_guide)
            inputs[1.0] = (x, h, w)
        elif with_guide:
            guide = self._guide(image)
        total: np.ndarray | None = None
        for s in tta.scales:
            x, hs, ws = inputs[s]
            logits = self._passes(x, hs, ws, tta.flip)
            if (hs, ws) != (h, w):
                logits = upsample_bilinear(np.ascontiguousarray(logits), h, w)
            total = logits if total is None else total + logits
        assert total is not None
        return total, guide

    def _logits_processed(
        self, rgb: np.ndarray, flip: bool | None, refine: bool, scales: Sequence[float] | None = None
    ) -> np.ndarray:
        # the guide is only built when the stored post-processing filters with it
        with_guide = refine and bool(self.postprocess.get("guided_filter"))
        logits, guide = self._forward_processed(rgb, flip, with_guide, scales)
        if refine and self.postprocess:
            logits = apply_postprocess(logits, guide, self.postprocess)
        return logits

    def predict_logits(
        self,
        rgb: np.ndarray,
        flip: bool | None = None,
        refine: bool = True,
        scales: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Scores f32 [H, W, classes] at the original image size (bilinear if the image was resized);
        their argmax is ``predict``'s mask. ``flip`` and ``scales``: the test-time augmentation (see
        ``predict``). ``refine``: apply the model's stored post-processing, if it has any
        (``postprocess``); the scores are then the filtered, biased logits, not the raw ones."""
        logits = self._logits_processed(rgb, flip, refine, scales)
        if logits.shape[:2] != rgb.shape[:2]:
            logits = upsample_bilinear(np.ascontiguousarray(logits), rgb.shape[0], rgb.shape[1])
        return logits

    def processed_scores(
        self,
        rgb: np.ndarray,
        flip: bool | None = None,
        refine: bool = True,
        scales: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores f32 [h, w, classes] at the processed size, post-processed unless ``refine=False``
        (their argmax, resized by nearest neighbour, is ``predict``'s mask), and the resized image
        f32 [h, w, 3] in [0, 1]. For per-stream work at the model's resolution (temporal smoothing)."""
        logits, guide = self._forward_processed(rgb, flip, with_guide=True, scales=scales)
        assert guide is not None
        if refine and self.postprocess:
            logits = apply_postprocess(logits, guide, self.postprocess)
        return logits, guide

    def predict_probabilities(
        self,
        rgb: np.ndarray,
        flip: bool | None = None,
        refine: bool = True,
        scales: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Class probabilities f32 [H, W, classes] at the original image size: the softmax of
        ``predict_logits`` (so the stored post-processing shapes them unless ``refine=False``)."""
        from seg_service.runtime.softmask import softmax

        return softmax(self.predict_logits(rgb, flip=flip, refine=refine, scales=scales))

    def predict(
        self,
        rgb: np.ndarray,
        flip: bool | None = None,
        refine: bool = True,
        scales: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Label mask u8 [H, W] at the original image size (nearest-neighbour if the image was resized).

        Test-time augmentation: ``flip`` adds the mirrored image's pass (twice the time, usually a
        little more accurate), ``scales`` runs the image at each of these sizes relative to the
        processed size (e.g. ``(0.75, 1.0, 1.25)``), the logits of all passes averaged. None (the
        default) takes the model's stored ``test_time`` (``augmentation()``; one pass when the file
        has none). ``refine=False`` skips the model's stored post-processing (edge-aware guided
        filter, decision bias) and returns the plain argmax of the logits."""
        if refine and set(self.postprocess) == {"logit_bias"}:
            # decision biases alone: added inside the argmax instead of in a pass of their own (the
            # same float32 sums; 2.3 ms of a CamVid frame's 41 ms went to that pass)
            logits, _ = self._forward_processed(rgb, flip, with_guide=False, scales=scales)
            return self.labels_from_scores(logits, rgb.shape[0], rgb.shape[1], self.postprocess["logit_bias"])
        return self.labels_from_scores(
            self._logits_processed(rgb, flip, refine, scales), rgb.shape[0], rgb.shape[1]
        )

    @staticmethod
    def labels_from_scores(
        scores: np.ndarray, height: int, width: int, bias: Sequence[float] | None = None
    ) -> np.ndarray:
        """Label mask u8 [height, width] from scores f32 [h, w, classes] at the processed size: the
        per-pixel argmax (of ``scores + bias`` with a bias per class), resized by nearest neighbour
        (what ``predict`` returns for its scores)."""
        mask = kernels.argmax_channels(
            np.ascontiguousarray(scores), None if bias is None else np.asarray(bias, dtype=np.float32)
        )
        if mask.shape != (height, width):
            mask = resize_nearest(mask, height, width)
        return mask


def load_model(path: str | os.PathLike[str], dry_run: bool = True) -> PackedModel:
    """Load and verify a packed model file (format, version, checksum, graph, channels) and, with
    ``dry_run``, run it once on a small image, so that a file that loads can serve. Every failure is a
    ``ModelFormatError`` naming the file.

    Also gives numpy's BLAS one thread (``threads.quiet_blas``): the runtime's few float convs are
    small, and OpenBLAS's idle workers spin after each call on the cores the binary kernels need.
    And keeps freed activation memory for the next run (``allocator.retain_freed_memory``).
    """
    quiet_blas()
    retain_freed_memory()
    packed = read_model(path)  # its errors already name the file
    step = "building the executor"
    try:
        model = PackedModel(packed)
        if dry_run:
            step = "dry run"
            model.dry_run()
    except ModelFormatError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
    except Exception as exc:  # MemoryError, a kernel's RuntimeError/ValueError: the file's fault
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelFormatError(f"{path}: {step} failed ({type(exc).__name__}: {text})") from None
    return model
