"""Label remapping: stored mask values -> training class indices, as a 256-entry lookup table.

Masks hold 8-bit values. The table sends every value to a class index in [0, num_classes), to the
ignore index, or to INVALID; a pixel that lands on INVALID is a label outside the class list and
stops training with an error naming the mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import InputError

INVALID = -1


def build_label_map(
    num_classes: int,
    ignore_index: int = 255,
    remap: Any = None,
    void_labels: Iterable[int] = (),
) -> np.ndarray:
    """int16[256] lookup table for the ``data.remap`` and ``data.void_labels`` config values.

    remap:
      None: identity for 0..num_classes-1.
      "binary_foreground" or {type: binary_foreground}: 0 -> 0 and every other value -> 1 (CCP person).
      {type: mapping, mapping: {src: dst} or [[src, dst], ...], default: null | "ignore" | int}:
        explicit table; values not listed are errors, or go to ``default`` when it is set.
      A plain mapping or list of pairs is read as {type: mapping, mapping: ...}.
    void_labels: stored values that mean "not labelled" (CamVid's 11); they become ignore_index.
    The stored value ignore_index always stays ignore_index.
    """
    table = np.full(256, INVALID, dtype=np.int16)
    kind, spec = _parse_remap(remap)
    if kind == "identity":
        table[: min(num_classes, 256)] = np.arange(min(num_classes, 256))
    elif kind == "binary_foreground":
        if num_classes != 2:
            raise InputError(
                f"data.remap binary_foreground needs 2 classes, the class list has {num_classes}"
            )
        table[:] = 1
        table[0] = 0
    else:
        pairs = spec["mapping"]
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        default = spec.get("default")
        if default is not None:
            table[:] = (
                ignore_index if default == "ignore" else _class_index(default, num_classes, ignore_index)
            )
        for item in items:
            try:
                src, dst = item
                src = int(src)
            except (TypeError, ValueError):
                raise InputError(
                    f"data.remap.mapping entries must be [stored, class] pairs, got {item!r}"
                ) from None
            if not 0 <= src < 256:
                raise InputError(f"data.remap.mapping: stored label {src} is not an 8-bit value")
            table[src] = ignore_index if dst == "ignore" else _class_index(dst, num_classes, ignore_index)
    for value in void_labels:
        table[int(value)] = ignore_index
    if 0 <= ignore_index < 256:
        table[ignore_index] = ignore_index
    return table


def _parse_remap(remap: Any) -> tuple[str, dict]:
    if remap is None:
        return "identity", {}
    if isinstance(remap, str):
        remap = {"type": remap}
    if isinstance(remap, list):
        remap = {"type": "mapping", "mapping": remap}
    if isinstance(remap, Mapping) and "type" not in remap:
        remap = {"type": "mapping", "mapping": dict(remap)}
    kind = remap.get("type")
    if kind in ("identity", "binary_foreground"):
        return kind, dict(remap)
    if kind == "mapping":
        if "mapping" not in remap:
            raise InputError("data.remap of type mapping needs a 'mapping' entry")
        unknown = set(remap) - {"type", "mapping", "default"}
        if unknown:
            raise InputError(f"unknown key(s) {sorted(unknown)} in data.remap")
        return kind, dict(remap)
    raise InputError(f"data.remap.type must be identity, binary_foreground or mapping, got {kind!r}")


def _class_index(value: Any, num_classes: int, ignore_index: int) -> int:
    index = int(value)
    if not (0 <= index < num_classes or index == ignore_index):
        raise InputError(f"data.remap target {index} is outside the class list (0..{num_classes - 1})")
    return index


def apply_label_map(mask: np.ndarray, table: np.ndarray, path: str, num_classes: int) -> np.ndarray:
    """Remap a uint8 mask; InputError naming ``path`` when a stored value has no class."""
    out = table[mask]
    if (out == INVALID).any():
        bad = sorted(int(v) for v in np.unique(mask[out == INVALID]))
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise InputError(
            f"mask {path} has label value(s) {shown} outside the class list "
            f"(0..{num_classes - 1}); set data.remap or data.void_labels"
        )
    return out.astype(np.uint8)
