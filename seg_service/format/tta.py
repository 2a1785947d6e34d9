"""The model description's optional ``test_time`` object (format version 4, docs/format.md): the
test-time augmentation a model runs with unless the caller says otherwise. Validation here; the
runtime (``seg_service.runtime.model``) applies it; ``export-model --repack --test-time`` writes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TEST_TIME_KEYS = frozenset({"flip", "scales"})
MIN_SCALE, MAX_SCALE = 0.25, 2.0
MAX_SCALES = 6  # each scale is one network pass (two with flip)


@dataclass(frozen=True)
class Augmentation:
    """Which network passes make a prediction: the image at each of ``scales`` (1.0 = the size the
    input rules give), and with ``flip`` each of them mirrored too; their logits are averaged."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def passes(self) -> int:
        """Network passes per image."""
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def pixel_cost(self) -> float:
        """Pixels the passes run the network on, relative to one pass at scale 1: about their time."""
        return sum(s * s for s in self.scales) * (2 if self.flip else 1)

    def describe(self) -> str:
        """'4 passes: scales 1, 1.5 + flip', '1 pass: scale 1'."""
        passes = f"{self.passes} pass" + ("es" if self.passes > 1 else "")
        scales = ("scales " if len(self.scales) > 1 else "scale ") + ", ".join(f"{s:g}" for s in self.scales)
        return f"{passes}: {scales}" + (" + flip" if self.flip else "")

    def to_json(self) -> dict[str, Any]:
        return {"flip": self.flip, "scales": list(self.scales)}


SINGLE_PASS = Augmentation()


def check_scales(scales: Sequence[Any], source: str = "scales") -> tuple[float, ...]:
    """Validated scales as floats: 1 to MAX_SCALES distinct numbers in [MIN_SCALE, MAX_SCALE];
    raises ValueError naming the problem."""
    if (
        isinstance(scales, str | bytes)
        or not isinstance(scales, Sequence)
        or not 1 <= len(scales) <= MAX_SCALES
    ):
        raise ValueError(f"{source}: give 1 to {MAX_SCALES} scales, got {scales!r}")
    out = []
    for value in scales:
        if not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and MIN_SCALE <= value <= MAX_SCALE
        ):
            raise ValueError(
                f"{source}: each scale must be a number from {MIN_SCALE} to {MAX_SCALE}, got {value!r}"
            )
        out.append(float(value))
    if len(set(out)) != len(out):
        raise ValueError(f"{source}: scales must not repeat, got {scales!r}")
    return tuple(out)


def parse_scales(text: str, source: str = "scales") -> tuple[float, ...]:
    """Scales from a comma list such as ``1`` or ``0.75,1,1.25`` (a query parameter, a CLI option)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"{source}: expected numbers separated by commas, e.g. 0.75,1,1.25; got {text!r}"
        ) from None
    return check_scales(values, source)


def validate_test_time(spec: Any, source: str = "model") -> None:
    """Check a model description's ``test_time`` object; raises ValueError naming the problem."""
    augmentation_from_json(spec, source)


def augmentation_from_json(spec: Any, source: str = "model") -> Augmentation:
    """The ``Augmentation`` of a description's ``test_time`` object (None: a single pass)."""
    if spec is None:
        return SINGLE_PASS
    if not isinstance(spec, Mapping) or set(spec) != TEST_TIME_KEYS:
        raise ValueError(f"{source}: 'test_time' must be a JSON object with exactly {sorted(TEST_TIME_KEYS)}")
    if not isinstance(spec["flip"], bool):
        raise ValueError(f"{source}: test_time 'flip' must be true or false, got {spec['flip']!r}")
    return Augmentation(
        flip=spec["flip"], scales=check_scales(spec["scales"], f"{source}: test_time 'scales'")
    )
