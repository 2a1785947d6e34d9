"""export-model's command line, apart from the exporter so that parsing (and ``--help``) needs no
PyTorch; ``seg_training.export.main`` runs the export with these arguments."""

from __future__ import annotations

import argparse
import json
from typing import Any

DESCRIPTION = "Export a trained Group-Net segmentation model to a packed ``.gnpk`` file (docs/format.md)."


def parse_palette(text: str) -> list[list[int]]:
    """'0,0,0;220,20,60' or a JSON list of [r, g, b]."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = [[int(v) for v in colour.split(",")] for colour in text.split(";") if colour.strip()]
        except ValueError:
            value = None
    if not isinstance(value, list) or not all(isinstance(c, list) and len(c) == 3 for c in value):
        raise argparse.ArgumentTypeError("palette must be 'r,g,b;r,g,b;...' or a JSON list of [r, g, b]")
    return value


def parse_classes(text: str) -> list[str]:
    """Class names as train-seg's data.classes takes them: a comma list, a YAML list or a file of names."""
    from .data.errors import InputError
    from .data.names import parse_class_list
    from .engine.config import parse_value

    value = parse_value(text) if text.lstrip().startswith("[") else text
    try:
        return parse_class_list(value, "--classes")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_postprocess(text: str) -> dict[str, Any] | None:
    """'none' or a JSON object (checked against the model's classes when the file is written)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object or 'none'")
    return value


def parse_test_time(text: str) -> dict[str, Any] | None:
    """'none' or a test-time augmentation object, e.g. '{"flip": true, "scales": [0.75, 1, 1.25]}'."""
    from seg_service.format import augmentation_from_json

    spec = parse_postprocess(text)  # the same 'none' | JSON object rule
    if spec is not None:
        try:
            augmentation_from_json(spec, "--test-time")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-model", description=DESCRIPTION)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training checkpoint (.pt)")
    source.add_argument(
        "--repack",
        metavar="GNPK",
        help="an existing packed model: change only its name, "
        "classes, palette or input rules (--max-side, --size-divisor); weights are copied",
    )
    parser.add_argument("--out", required=True, help="output packed model (.gnpk)")
    parser.add_argument(
        "--name",
        help="model name served by the API (default: the network's name, e.g. "
        "groupnet_resnet18_k2_os16_aspp_skip1_w0.5)",
    )
    parser.add_argument(
        "--classes",
        type=parse_classes,
        help="class names: 'a,b,c', a YAML list or a file with one name per line (default: "
        "the checkpoint's, i.e. the config's data.classes)",
    )
    parser.add_argument(
        "--palette",
        type=parse_palette,
        help="'r,g,b;r,g,b;...' or a JSON list (default: the "
        "checkpoint's, i.e. the config's data.palette, else the PASCAL VOC colour map)",
    )
    parser.add_argument("--max-side", type=int, help="long side images are resized down to (default 512)")
    parser.add_argument(
        "--size-divisor", type=int, help="inputs are padded to a multiple of this (default 32)"
    )
    parser.add_argument(
        "--stem-u8",
        action="store_true",
        help="store the stem (the float conv that reads the image) as an integer conv of the image's "
        "u8 pixels with 7-bit weights (format version 3): the same network to about 0.1 IoU point, "
        "its stem 3-4x faster on AVX-512 VNNI CPUs (docs/format.md, docs/benchmarks.md); works "
        "with --repack",
    )
    parser.add_argument(
        "--postprocess",
        type=parse_postprocess,
        default=False,
        metavar="JSON|none",
        help="with --repack: the post-processing to store (docs/format.md), e.g. "
        "'{\"logit_bias\": [0, -0.25]}', or 'none' to remove it; train-seg tune-postprocess "
        "fits one on training images",
    )
    parser.add_argument(
        "--test-time",
        type=parse_test_time,
        default=False,
        metavar="JSON|none",
        help="with --repack: the test-time augmentation predictions run with by default "
        '(docs/format.md, format version 4), e.g. \'{"flip": true, "scales": [0.75, 1, 1.25]}\' '
        "(the mean of 6 network passes: more accurate, 6x the time), or 'none' for one pass; "
        "callers can still ask for other passes (predict(flip=, scales=), /segment?flip=&scales=)",
    )
    return parser
