"""Class lists and split ranges written by users: one parser each, used by every command.

Class lists (``data.classes``, ``export-model --classes``) come as a YAML list, a comma list
("other,road,car") or a file of names, one per line. Split ranges (``data.train_split``) name an
inclusive range of file names, or a range of positions in percent; names may contain hyphens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError

CLASS_LIST_FORMS = "a YAML list, a comma list like 'background,road,car' or a file with one name per line"


def parse_class_list(value: Any, where: str = "data.classes", search_dirs: Sequence[Path] = ()) -> list[str]:
    """Class names from a list, a comma list or a file of names (one per line; '#' lines skipped).

    A string without a comma is a file name: absolute, or looked up relative to the working
    directory and then to each of ``search_dirs`` (e.g. the data root). A file line may carry an index
    before the name ("0 background", as many data sets ship them); the index must count up from 0.
    """
    if isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str) and "," in value:
        names = [part.strip() for part in value.strip().strip("[]").split(",")]
        # A trailing comma ("a,b,") leaves one empty name; keep the rule strict elsewhere.
        if names and names[-1] == "":
            names.pop()
    elif isinstance(value, str) and value.strip():
        names = _read_class_file(_find_class_file(value.strip(), where, search_dirs))
    else:
        raise InputError(f"{where} must be {CLASS_LIST_FORMS}, got {value!r}")
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise InputError(f"{where}: class {empty[0]} has an empty name in {value!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{where}: class name {name!r} appears twice")
        seen.add(name)
    if len(names) < 2:
        raise InputError(
            f"{where} names {len(names)} class ({names}); a segmentation model needs at least 2 "
            f"(give {CLASS_LIST_FORMS})"
        )
    return names


def _find_class_file(text: str, where: str, search_dirs: Sequence[Path]) -> Path:
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, *(Path(d) / path for d in search_dirs)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"{where} {text!r}: no such file ({tried}); give {CLASS_LIST_FORMS}")


_INDEXED = re.compile(r"^(\d+)[\s:,]+(\S.*)$")


def _read_class_file(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class list {path}: {exc.__class__.__name__}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    matches = [_INDEXED.match(line) for line in lines]
    indexed = [m for m in matches if m is not None]
    if lines and len(indexed) == len(lines):
        numbers = [int(m.group(1)) for m in indexed]
        if numbers != list(range(len(numbers))):
            raise InputError(f"class list {path}: the indices before the names must be 0, 1, 2, ... in order")
        return [m.group(2).strip() for m in indexed]
    return lines


# --------------------------------------------------------------------------- split ranges

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s*-\s*(\d+(?:\.\d+)?)%\s*$")

RANGE_FORMS = (
    "an inclusive name range FIRST-LAST (e.g. 0001-0904 or frame-001-frame-032), a percent range "
    "of the sorted names (0%-90%), a list of those, a list file (one name per line) or all"
)


def _in_range(stem: str, lo: str, hi: str) -> bool:
    if lo.isdigit() and hi.isdigit() and stem.isdigit():
        return int(lo) <= int(stem) <= int(hi)
    return lo <= stem <= hi


def select_range(split: str, stems: Sequence[str], what: str) -> list[str] | None:
    """The stems a range names, or None when ``split`` is no range.

    - ``A%-B%``: positions [floor(n*A/100), floor(n*B/100)) of the sorted names, so 0%-90% and 90%-100%
      split a folder without overlap.
    - a name that exists: that one image.
    - ``FIRST-LAST``: inclusive, numeric when both ends and the name are numbers, else by string order.
      Names may contain hyphens: the range splits at the one hyphen whose both sides are existing
      names; with a single hyphen the ends need not exist (0001-0904). A range that cannot be split
      unambiguously is an error (use a list file then).
    """
    ordered = sorted(stems)
    percent = _PERCENT.match(split)
    if percent:
        first, last = (float(v) for v in percent.groups())
        if not 0 <= first <= last <= 100:
            raise InputError(
                f"split {split!r} for {what}: percentages must satisfy 0 <= first <= last <= 100"
            )
        n = len(ordered)
        return ordered[math.floor(n * first / 100 + 1e-9) : math.floor(n * last / 100 + 1e-9)]
    available = set(stems)
    if split in available:
        return [split]
    cuts = [i for i, ch in enumerate(split) if ch == "-" and 0 < i < len(split) - 1]
    if not cuts:
        return None
    both_exist = [
        (split[:i].strip(), split[i + 1 :].strip())
        for i in cuts
        if split[:i].strip() in available and split[i + 1 :].strip() in available
    ]
    if len(both_exist) > 1:
        options = " or ".join(f"{lo!r} to {hi!r}" for lo, hi in both_exist)
        raise InputError(f"split {split!r} for {what} is ambiguous ({options}); use a list file")
    if both_exist:
        lo, hi = both_exist[0]
    elif len(cuts) == 1:
        lo, hi = split[: cuts[0]].strip(), split[cuts[0] + 1 :].strip()
    else:
        raise InputError(
            f"split {split!r} for {what}: with names containing '-', both ends of a range must be "
            f"existing image names (e.g. {ordered[0] + '-' + ordered[-1] if ordered else 'a-b'!r})"
        )
    if not lo or not hi:
        return None
    return [s for s in stems if _in_range(s, lo, hi)]
