"""The packed model format (``.gnpk``, docs/format.md): the one contract between training and serving.

Everything a writer or a reader of the file must agree on lives here: the container and checksum,
the op schemas and their validation (``model_file``), the post-processing spec (``postprocess``),
the sign-bit layout and the conv output-size rule (``layout``). This package imports numpy,
safetensors and the standard library only, never the rest of the project (an import-linter
contract in pyproject.toml keeps it so), so the exporter needs neither the compiled kernels nor
the runtime.
"""

from __future__ import annotations

from seg_service.format.layout import (
    WORD_BITS,
    conv_output_size,
    pack_sign_bits,
    packed_words,
    unpack_sign_bits,
)
from seg_service.format.model_file import (
    FILE_EXTENSION,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_MODEL_FILE_BYTES,
    MAX_POOL_SIZE,
    MAX_SIDE,
    MAX_SIZE_DIVISOR,
    MAX_TEXT_CHARS,
    MODEL_NAME_PATTERN,
    OP_INT_BOUNDS,
    READABLE_VERSIONS,
    SUPPORTED_OPS,
    U8_CONV_MAX_KERNEL,
    U8_CONV_WEIGHT_RANGE,
    ModelFormatError,
    PackedFile,
    compute_checksum,
    decode_model,
    encode_model,
    file_version,
    infer_channels,
    read_model,
    u8_conv_float_weight,
    validate_graph,
    validate_model_description,
    write_model,
)
from seg_service.format.postprocess import GUIDED_FILTER_KEYS, POSTPROCESS_KEYS, validate_postprocess

__all__ = [
    "FILE_EXTENSION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GUIDED_FILTER_KEYS",
    "MAX_MODEL_FILE_BYTES",
    "MAX_POOL_SIZE",
    "MAX_SIDE",
    "MAX_SIZE_DIVISOR",
    "MAX_TEXT_CHARS",
    "MODEL_NAME_PATTERN",
    "OP_INT_BOUNDS",
    "POSTPROCESS_KEYS",
    "READABLE_VERSIONS",
    "SUPPORTED_OPS",
    "U8_CONV_MAX_KERNEL",
    "U8_CONV_WEIGHT_RANGE",
    "WORD_BITS",
    "ModelFormatError",
    "PackedFile",
    "compute_checksum",
    "conv_output_size",
    "decode_model",
    "encode_model",
    "file_version",
    "infer_channels",
    "pack_sign_bits",
    "packed_words",
    "read_model",
    "u8_conv_float_weight",
    "unpack_sign_bits",
    "validate_graph",
    "validate_model_description",
    "validate_postprocess",
    "write_model",
]
