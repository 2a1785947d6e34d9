"""The executor's planner: a validated graph (docs/format.md) -> the list of steps that computes it.

Each :class:`Step` computes one op or a fused run of ops and says what it reads (float values, and
for binary convs a value's sign bits), what it writes and which values' sign bits it packs. The
planner builds the steps once, at load; ``executor.GraphExecutor`` runs them in order.

Planning is three passes:

1. **Fusions** (``_FUSIONS``): each finds a pattern of ops and claims them as one step. A run of
   ``lincomb`` ops is one ``kernels.lincomb_group`` call (``LincombGroupStep``); the bases of a
   binary ASPP branch add up in one ``kernels.bconv2d_chain`` call (``BinaryConvStep`` with several
   bases); a ``concat`` read only by a 1x1 float conv is never built (``ProjectionStep``). Ops no
   fusion claims become one step each; a 1x1 float conv is a ``PointwiseConvStep``
   (``kernels.conv1x1``). A concat only binary convs read is never built either: its parts are
   sign-packed into their channels' bits, an upsampled part as it is upsampled
   (``ConcatBitsStep``). A new fusion is one finder here and its step class.
2. **Packing**: a value read by binary convs is sign-packed once. Its producer packs it in its
   epilogue where it can (a binary conv, a lincomb group); else a ``PackStep`` packs it before its
   first reader when several binary conv steps read it; else its one reader packs it itself.
3. **Memory**: outputs no step reads as floats are not written where the step can skip them (a
   lincomb group's), and every value and packed value is freed after its last reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from seg_service import kernels
from seg_service.runtime import ops

Values = dict[str, np.ndarray]  # float maps [H, W, C] by value name
Bits = dict[str, np.ndarray]  # sign bits u64 [H, W, Wd] by value name


def op_reads(op: Mapping[str, Any]) -> list[str]:
    """Names of the values an op reads."""
    names = list(op.get("ins", []))
    for key in ("in", "like", "residual"):
        if op.get(key) is not None:
            names.append(op[key])
    return names


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


def _conv_params(op: Mapping[str, Any], k: int) -> str:
    return (
        f"k{k}"
        + (f" s{op['stride']}" if op["stride"] != 1 else "")
        + (f" d{op['dilation']}" if op["dilation"] != 1 else "")
    )


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


class Step:
    """One unit of the plan. ``index`` is the op it is timed and reported under (its first op)."""

    kind: str = ""
    can_pack = False  # its epilogue can write the sign bits of what it writes

    def __init__(
        self, index: int, op_indices: Iterable[int], reads: Iterable[str], writes: Iterable[str], label: str
    ) -> None:
        self.index = index
        self.ops = tuple(op_indices)  # op indices it computes
        self.reads = tuple(reads)  # float values it reads
        self.writes = tuple(writes)  # values it writes
        self.label = label  # the value named in a profile
        self.reads_bits: tuple[str, ...] = ()  # values it reads as sign bits
        self.packs: tuple[str, ...] = ()  # values whose sign bits it writes
        self.frees: tuple[str, ...] = ()  # values and sign bits to drop after it (their last reader)
        self.frees_bits: tuple[str, ...] = ()

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        raise NotImplementedError

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        """Shapes and parameters for a profile, and multiply-adds per run (0 where it does not apply)."""
        return _shape_str(values[self.writes[-1]].shape), 0

    def skip_writes(self, unread: set[str]) -> None:
        """``unread``: values it writes that no step reads as floats and the graph does not output."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(#{self.index} {self.kind} -> {self.label})"


class PackStep(Step):
    """Sign-packs a value that several binary conv steps read (the K branches of a group, an ASPP
    head's parallel convs) and whose producer cannot pack it."""

    kind = "pack_bits"

    def __init__(self, value: str, index: int) -> None:
        super().__init__(index, (), (value,), (), value)
        self.packs = (value,)

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        bits[self.label] = kernels.pack_bits(values[self.label])

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        return _shape_str(values[self.label].shape), 0


class BinaryConvStep(Step):
    """A binary conv, or a chain of them adding up (``bconv2d_chain``): same input and geometry, each
    base's residual the previous base's output. With ``pack_input`` it binarises its float input
    itself (``bconv2d_float``); else it reads the input's sign bits."""

    kind = "bconv2d"
    can_pack = True

    def __init__(
        self,
        indices: tuple[int, ...],
        members: list[Mapping[str, Any]],
        tensors: Mapping[str, np.ndarray],
        prepared: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        first, last = members[0], members[-1]
        residual = first.get("residual")
        super().__init__(
            indices[0], indices, () if residual is None else (residual,), (last["out"],), last["out"]
        )
        self.op = first
        self.binary_in: str = first["in"]  # the value it binarises
        self.residual = residual
        self.bases = [
            (prepared(op), tensors[op["mul"]], tensors[op["bias"]], op["relu_before"], op["relu_after"])
            for op in members
        ]
        self.kernel = int(tensors[first["weight"]].shape[1])
        self.pack_input = False
        self._call: Callable[[Values, Bits], Any] | None = None  # made at the first run

    def read_input_as(self, packed: bool) -> None:
        """Packing pass: read the input's sign bits (``packed``), or binarise the float input here."""
        self.pack_input = not packed
        if packed:
            self.reads_bits = (self.binary_in,)
        else:
            self.reads = (*self.reads, self.binary_in)

    def _kernel_call(self) -> Callable[[Values, Bits], Any]:
        """The kernel call with every argument that does not change between runs bound once, in
        positional order (a person frame runs 41 of these steps: keyword and dictionary lookups per
        call added up), made at the first run, after planning has set ``pack_input`` and ``packs``."""
        op = self.op
        binary_in, residual_name = self.binary_in, self.residual
        pack_output = bool(self.packs)
        geometry = (op["stride"], op["padding"], op["dilation"])
        from_floats = self.pack_input  # reads the float input (binarised in this step), else its bits
        if len(self.bases) > 1:  # a chain takes bits only: it packs a float input first
            kernel: Callable[..., Any] = kernels.bconv2d_chain
            fixed: tuple[Any, ...] = (self.bases, op["in_channels"], *geometry)
            pack_first = from_floats
        else:
            w, mul, bias, relu_before, relu_after = self.bases[0]
            epilogue = (mul, bias, relu_before, relu_after)
            if from_floats:  # bconv2d_float binarises the float input itself
                kernel, fixed = kernels.bconv2d_float, (w, *geometry, *epilogue)
            else:
                kernel, fixed = kernels.bconv2d, (w, op["in_channels"], *geometry, *epilogue)
            pack_first = False

        def call(values: Values, bits: Bits) -> Any:
            a = values[binary_in] if from_floats else bits[binary_in]
            if pack_first:
                a = kernels.pack_bits(a)
            residual = None if residual_name is None else values[residual_name]
            return kernel(a, *fixed, residual, pack_output)

        return call

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        if self._call is None:
            self._call = self._kernel_call()
        result = self._call(values, bits)
        if self.packs:
            values[self.label], bits[self.label] = result
        else:
            values[self.label] = result

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        out = values[self.label].shape
        c = self.op["in_channels"]
        # The input may exist as packed bits only (its producer never wrote the floats).
        src = values.get(self.binary_in, bits.get(self.binary_in))
        src_shape = f"{src.shape[0]}x{src.shape[1]}x{c}" if src is not None else f"?x?x{c}"
        detail = f"{src_shape} -> {out[2]} {_conv_params(self.op, self.kernel)}"
        n = len(self.bases)
        return detail + (f" x{n}" if n > 1 else ""), n * out[0] * out[1] * out[2] * self.kernel**2 * c


@dataclass(frozen=True)
class LincombGroup:
    """A run of consecutive ``lincomb`` ops computed by one ``kernels.lincomb_group`` call.

    A Group-Net block ends in such a run: the gated sum of its K branches, then the K soft-gate
    mixes that read that sum. Computing them together reads each branch map once instead of twice.
    """

    indices: tuple[int, ...]  # op indices of the members, in order
    inputs: tuple[str, ...]  # values read from outside the group
    outputs: tuple[str, ...]  # one per member
    program: tuple[tuple[tuple[int, float], ...], ...]  # per member: (source, coeff), see lincomb_group


class LincombGroupStep(Step):
    """A ``LincombGroup``; maps the kernel does not take (different shapes: numpy broadcasting) go
    through the numpy ops one by one, and their promised sign bits are packed after."""

    kind = "lincomb"
    can_pack = True

    def __init__(self, group: LincombGroup, members: list[Mapping[str, Any]]) -> None:
        super().__init__(group.indices[0], group.indices, group.inputs, group.outputs, group.outputs[0])
        self.group = group
        self.members = members
        self.drop: tuple[int, ...] = ()  # outputs computed but never written (None from the kernel)
        self._pack: list[int] | None = None  # indices of the outputs in packs, made at the first run

    def skip_writes(self, unread: set[str]) -> None:
        self.drop = tuple(m for m, name in enumerate(self.group.outputs) if name in unread)

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        group = self.group
        inputs = [values[name] for name in group.inputs]
        first = inputs[0]
        if self._pack is None:  # fixed once planning is done
            self._pack = [m for m, name in enumerate(group.outputs) if name in self.packs]
        pack = self._pack
        if all(x.dtype == np.float32 and x.shape == first.shape for x in inputs):
            outs, packed = kernels.lincomb_group(inputs, group.program, pack, () if keep_all else self.drop)
            values.update(
                (name, out) for name, out in zip(group.outputs, outs, strict=True) if out is not None
            )
            bits.update((group.outputs[m], packed[m]) for m in pack)
            return
        for op in self.members:
            values[op["out"]] = ops.lincomb([values[n] for n in op["ins"]], op["coeffs"])
        bits.update((group.outputs[m], kernels.pack_bits(values[group.outputs[m]])) for m in pack)

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        shape = values[self.group.inputs[0]].shape
        return f"{_shape_str(shape)} x{len(self.group.outputs)} from {len(self.group.inputs)}", 0


# Float ops: one function per op kind, (op, tensors, values) -> the op's output.
_FloatOp = Callable[[Mapping[str, Any], Mapping[str, np.ndarray], Values], np.ndarray]
_FLOAT_OPS: dict[str, _FloatOp] = {
    "conv2d": lambda op, t, v: ops.conv2d(
        v[op["in"]], t[op["weight"]], t[op["bias"]], op["stride"], op["padding"], op["dilation"], op["relu"]
    ),
    "conv2d_u8": lambda op, t, v: ops.ImageConv.from_op(op, t)(v[op["in"]]),
    "affine": lambda op, t, v: ops.affine(
        v[op["in"]],
        t[op["mul"]],
        t[op["bias"]],
        op["relu_before"],
        op["relu_after"],
        None if op.get("residual") is None else v[op["residual"]],
    ),
    "lincomb": lambda op, t, v: ops.lincomb([v[n] for n in op["ins"]], op["coeffs"]),
    "relu": lambda op, t, v: ops.relu(v[op["in"]]),
    "maxpool2d": lambda op, t, v: ops.maxpool2d(v[op["in"]], op["kernel"], op["stride"], op["padding"]),
    "global_avgpool": lambda op, t, v: ops.global_avgpool(v[op["in"]]),
    "adaptive_avgpool": lambda op, t, v: ops.adaptive_avgpool(v[op["in"]], op["size"]),
    "upsample_bilinear": lambda op, t, v: ops.upsample_bilinear(
        v[op["in"]], v[op["like"]].shape[0], v[op["like"]].shape[1]
    ),
    "concat": lambda op, t, v: ops.concat([v[n] for n in op["ins"]]),
}


class FloatOpStep(Step):
    """One float op (``runtime.ops``)."""

    def __init__(self, index: int, op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        super().__init__(index, (index,), op_reads(op), (op["out"],), op["out"])
        self.kind = op["op"]
        self.op = op
        self.tensors = tensors
        self.fn = _FLOAT_OPS[self.kind]

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        values[self.label] = self.fn(self.op, self.tensors, values)

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        out = values[self.label].shape
        if self.kind != "conv2d":
            return _shape_str(out), 0
        weight = self.tensors[self.op["weight"]].shape
        src = values[self.op["in"]].shape
        return (
            f"{src[0]}x{src[1]}x{weight[3]} -> {out[2]} {_conv_params(self.op, weight[1])}",
            out[0] * out[1] * out[2] * weight[1] * weight[1] * weight[3],
        )


class BroadcastStep(FloatOpStep):
    """An ``upsample_bilinear`` that feeds only a fused concat: a 1x1 input (an image-pooling branch)
    is passed on as it is, and the projection adds it as a constant."""

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        src = values[self.op["in"]]
        values[self.label] = src if src.shape[:2] == (1, 1) else self.fn(self.op, self.tensors, values)


class ProjectionStep(Step):
    """A 1x1 float conv of a ``concat`` it alone reads, run on the parts (``ops.conv1x1_of_concat``):
    the concat (an ASPP head's branches and image pooling) is never built."""

    kind = "conv2d"

    def __init__(
        self,
        concat: int,
        conv: int,
        parts: list[str],
        op: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
    ) -> None:
        super().__init__(conv, (concat, conv), parts, (op["out"],), op["out"])
        self.op = op
        self.weight, self.bias = tensors[op["weight"]], tensors[op["bias"]]
        self.weight_t = ops.pointwise_weight(self.weight)  # arranged once, for kernels.conv1x1

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        values[self.label] = ops.conv1x1_of_concat(
            [values[n] for n in self.reads], self.weight, self.bias, self.op["relu"], self.weight_t
        )

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        out = values[self.label].shape
        in_channels = self.weight.shape[3]
        # Count the MACs of the full-size parts only (a 1x1 part went into the bias).
        full = sum(values[n].shape[2] for n in self.reads if values[n].shape[:2] != (1, 1))
        return (
            f"{out[0]}x{out[1]}x{full} (+{in_channels - full} as bias) -> {out[2]} {_conv_params(self.op, 1)}"
        ), out[0] * out[1] * out[2] * full


class PointwiseConvStep(FloatOpStep):
    """A 1x1, stride-1, unpadded float ``conv2d`` (a skip projection, the classifier):
    ``ops.pointwise_conv`` with the weights arranged for it once, here."""

    def __init__(self, index: int, op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        super().__init__(index, op, tensors)
        self.weight, self.bias = tensors[op["weight"]], tensors[op["bias"]]
        self.weight_t = ops.pointwise_weight(self.weight)

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        values[self.label] = ops.pointwise_conv(
            values[self.op["in"]], self.weight_t, self.bias, self.op["relu"]
        )


class ImageConvStep(FloatOpStep):
    """A ``conv2d_u8`` (the integer stem): ``ops.ImageConv`` with its weights and bias tables. Reads
    the normalised image, or its u8 pixels when ``predict`` passes them."""

    def __init__(self, index: int, op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        super().__init__(index, op, tensors)
        self.conv = ops.ImageConv.from_op(op, tensors)  # arranged once, not per call as _FLOAT_OPS does

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        values[self.label] = self.conv(values[self.op["in"]])

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        out = values[self.label].shape
        weight = self.tensors[self.op["weight"]].shape
        src = values[self.op["in"]].shape
        return (
            f"{src[0]}x{src[1]}x{weight[3]} u8 -> {out[2]} k{weight[1]}"
            + (f" s{self.op['stride']}" if self.op["stride"] != 1 else ""),
            out[0] * out[1] * out[2] * weight[1] * weight[1] * weight[3],
        )


def is_pointwise_conv(op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> bool:
    """A float conv2d that is 1x1, stride 1 and unpadded (a per-pixel matrix product)."""
    return (
        op["op"] == "conv2d"
        and tensors[op["weight"]].shape[1:3] == (1, 1)
        and op["stride"] == 1
        and op["padding"] == 0
    )


class ConcatBitsStep(Step):
    """A ``concat`` read only by binary convs (the skip decoder's upsampled head and projected
    skip): its sign bits are written straight from the parts, each into its channels' words
    (``kernels.pack_bits_into``); the float concat is never built. A part that is an
    ``upsample_bilinear`` only this concat reads is computed here too, and with every part starting
    at a word boundary its floats are never written either (``kernels.upsample_bilinear_bits``
    packs each output row as it is made). Parts that share words go through
    ``kernels.pack_bits_concat``. ``keep_all`` also writes the floats (the upsampled parts, the
    concat)."""

    kind = "concat"
    can_pack = True

    def __init__(
        self, index: int, op: Mapping[str, Any], upsamples: Mapping[str, tuple[int, Mapping[str, Any]]]
    ):
        reads: list[str] = []
        for name in op["ins"]:
            if name in upsamples:
                up = upsamples[name][1]
                reads.extend(n for n in (up["in"], up["like"]) if n not in reads)
            elif name not in reads:
                reads.append(name)
        super().__init__(index, (index, *(i for i, _ in upsamples.values())), reads, (op["out"],), op["out"])
        self.op = op
        self.upsamples = {name: up for name, (_, up) in upsamples.items()}  # part -> its upsample op

    def _float_part(self, name: str, values: Values) -> np.ndarray:
        up = self.upsamples.get(name)
        if up is None:
            return values[name]
        like = values[up["like"]]
        return ops.upsample_bilinear(values[up["in"]], like.shape[0], like.shape[1])

    def run(self, values: Values, bits: Bits, keep_all: bool) -> None:
        if keep_all or not self.packs:
            parts = [self._float_part(name, values) for name in self.op["ins"]]
            values.update(
                (name, part)
                for name, part in zip(self.op["ins"], parts, strict=True)
                if name in self.upsamples
            )
            values[self.label] = ops.concat(parts)
            if self.packs:
                bits[self.label] = kernels.pack_bits(values[self.label])
            return
        h, w, channels = self._shape(values)
        offsets = np.cumsum([0] + [self._channels(name, values) for name in self.op["ins"]])
        if any(offset % 64 for offset in offsets[:-1]):
            bits[self.label] = kernels.pack_bits_concat([self._float_part(n, values) for n in self.op["ins"]])
            return
        out = np.empty((h, w, -(-channels // 64)), dtype=np.uint64)
        for name, offset in zip(self.op["ins"], offsets[:-1], strict=False):
            up = self.upsamples.get(name)
            if up is not None and values[up["in"]].shape[:2] != (h, w):
                kernels.upsample_bilinear_bits(values[up["in"]], out, int(offset) // 64)
            else:
                kernels.pack_bits_into(values[self._source(name)], out, int(offset) // 64)
        bits[self.label] = out

    def _source(self, name: str) -> str:
        """The value a part's channels come from: the part itself, or its upsample's input."""
        up = self.upsamples.get(name)
        return name if up is None else up["in"]

    def _channels(self, name: str, values: Values) -> int:
        return int(values[self._source(name)].shape[2])

    def _shape(self, values: Values) -> tuple[int, int, int]:
        first = self.op["ins"][0]
        up = self.upsamples.get(first)
        h, w = values[up["like"] if up is not None else first].shape[:2]
        return h, w, sum(self._channels(name, values) for name in self.op["ins"])

    def describe(self, values: Values, bits: Bits) -> tuple[str, int]:
        h, w, channels = self._shape(values)
        ups = f" (+{len(self.upsamples)} upsample)" if self.upsamples else ""
        return f"{h}x{w}x{channels}{ups}" + (" -> bits" if self.packs else ""), 0


# --------------------------------------------------------------------------------------------
# Fusion finders
# --------------------------------------------------------------------------------------------


def lincomb_groups(ops_list: list[dict[str, Any]]) -> list[LincombGroup]:
    """Every maximal run of consecutive lincomb ops (runs of one op included) as a LincombGroup."""
    groups: list[LincombGroup] = []
    index = 0
    while index < len(ops_list):
        if ops_list[index]["op"] != "lincomb":
            index += 1
            continue
        end = index
        while end < len(ops_list) and ops_list[end]["op"] == "lincomb":
            end += 1
        members = ops_list[index:end]
        produced = {op["out"]: j for j, op in enumerate(members)}
        inputs: list[str] = []
        for j, op in enumerate(members):
            for name in op["ins"]:
                if produced.get(name, j) >= j and name not in inputs:
                    inputs.append(name)
        program = []
        for j, op in enumerate(members):
            terms = []
            for name, coeff in zip(op["ins"], op["coeffs"], strict=True):
                source = len(inputs) + produced[name] if produced.get(name, j) < j else inputs.index(name)
                terms.append((source, float(coeff)))
            program.append(tuple(terms))
        groups.append(
            LincombGroup(
                tuple(range(index, end)), tuple(inputs), tuple(op["out"] for op in members), tuple(program)
            )
        )
        index = end
    return groups


def _readers(ops_list: list[dict[str, Any]]) -> dict[str, list[int]]:
    readers: dict[str, list[int]] = {}
    for index, op in enumerate(ops_list):
        for name in op_reads(op):
            readers.setdefault(name, []).append(index)
    return readers


@dataclass(frozen=True)
class ConcatProjection:
    """A ``concat`` read only by a 1x1 float ``conv2d``: the conv runs on the parts, no concat is built.

    An ASPP head ends so: its branches and its image-pooling branch (a 1x1 map upsampled to the
    feature size) are concatenated and projected. The upsampling ops in ``broadcasts`` feed only
    the concat; they pass their 1x1 input on, and the projection adds its part as a constant.
    """

    concat: int  # op index of the concat (not run on its own)
    conv: int  # op index of the 1x1 conv2d that reads it
    broadcasts: frozenset[int]  # upsample_bilinear ops whose 1x1 input is passed on as it is


def concat_projections(
    ops_list: list[dict[str, Any]], tensors: Mapping[str, np.ndarray], outputs: list[str]
) -> list[ConcatProjection]:
    """Every concat whose only reader is a 1x1, stride-1, unpadded float conv2d."""
    readers = _readers(ops_list)
    producers = {op["out"]: index for index, op in enumerate(ops_list)}
    found = []
    for index, op in enumerate(ops_list):
        if op["op"] != "concat" or op["out"] in outputs or len(readers.get(op["out"], [])) != 1:
            continue
        conv = ops_list[readers[op["out"]][0]]
        weight = tensors[conv["weight"]] if conv["op"] == "conv2d" else None
        if weight is None or weight.shape[1:3] != (1, 1) or conv["stride"] != 1 or conv["padding"] != 0:
            continue
        broadcasts = set()
        for name in op["ins"]:
            producer = producers.get(name)
            if (
                producer is not None
                and ops_list[producer]["op"] == "upsample_bilinear"
                and name not in outputs
                and readers.get(name) == [index]
            ):
                broadcasts.add(producer)
        if len(broadcasts) == len(op["ins"]):
            broadcasts = set()  # some part must give the output its spatial size
        found.append(ConcatProjection(index, readers[op["out"]][0], frozenset(broadcasts)))
    return found


@dataclass(frozen=True)
class ConcatBits:
    """A ``concat`` that only binary convs read, as their binarised input (not as a residual), and
    that is not a graph output: only its sign bits are made (``ConcatBitsStep``). ``upsamples``:
    its parts made by an ``upsample_bilinear`` that nothing else reads, computed by that step."""

    concat: int  # op index
    upsamples: tuple[int, ...]  # op indices


def binary_read_concats(ops_list: list[dict[str, Any]], outputs: list[str]) -> list[ConcatBits]:
    """Every concat whose floats no op needs (only binary convs read it, as their input)."""
    readers = _readers(ops_list)
    producers = {op["out"]: index for index, op in enumerate(ops_list)}
    found = []
    for index, op in enumerate(ops_list):
        name = op["out"]
        if op["op"] != "concat" or name in outputs or not readers.get(name):
            continue
        if not all(
            ops_list[r]["op"] == "bconv2d"
            and ops_list[r]["in"] == name
            and ops_list[r].get("residual") != name
            for r in readers[name]
        ):
            continue
        upsamples = []
        for part in dict.fromkeys(op["ins"]):
            producer = producers.get(part)
            if (
                producer is not None
                and ops_list[producer]["op"] == "upsample_bilinear"
                and part not in outputs
                and readers.get(part) == [index]
            ):
                upsamples.append(producer)
        found.append(ConcatBits(index, tuple(upsamples)))
    return found


def bconv_chains(
    ops_list: list[dict[str, Any]], tensors: Mapping[str, np.ndarray], outputs: list[str]
) -> list[tuple[int, ...]]:
    """Runs of consecutive bconv2d ops that ``kernels.bconv2d_chain`` computes in one call.

    Each op after the first reads the same input with the same geometry, takes the previous op's
    output as its residual, and that output has no other reader: the bases of a layer-wise binary
    decomposition (a binary ASPP branch) adding up.
    """
    readers = _readers(ops_list)

    def geometry(op: dict[str, Any]) -> tuple[Any, ...]:
        return (
            op["in"],
            op["in_channels"],
            tensors[op["weight"]].shape[:3],
            op["stride"],
            op["padding"],
            op["dilation"],
        )

    chains = []
    index = 0
    while index < len(ops_list):
        chain = [index]
        if ops_list[index]["op"] == "bconv2d":
            while chain[-1] + 1 < len(ops_list):
                prev, nxt = ops_list[chain[-1]], ops_list[chain[-1] + 1]
                if not (
                    nxt["op"] == "bconv2d"
                    and geometry(nxt) == geometry(prev)
                    and nxt.get("residual") == prev["out"]
                    and prev["out"] not in outputs
                    and readers.get(prev["out"]) == [chain[-1] + 1]
                ):
                    break
                chain.append(chain[-1] + 1)
        if len(chain) > 1:
            chains.append(tuple(chain))
        index = chain[-1] + 1
    return chains


@dataclass
class _Graph:
    """What a fusion sees: the op list, tensors, graph outputs and the prepared-weights cache."""

    ops: list[dict[str, Any]]
    tensors: Mapping[str, np.ndarray]
    outputs: list[str]
    prepared: Callable[[Mapping[str, Any]], Any]


def _lincomb_group_steps(g: _Graph) -> list[Step]:
    return [LincombGroupStep(group, [g.ops[i] for i in group.indices]) for group in lincomb_groups(g.ops)]


def _chain_steps(g: _Graph) -> list[Step]:
    return [
        BinaryConvStep(chain, [g.ops[i] for i in chain], g.tensors, g.prepared)
        for chain in bconv_chains(g.ops, g.tensors, g.outputs)
    ]


def _projection_steps(g: _Graph) -> list[Step]:
    steps: list[Step] = []
    for p in concat_projections(g.ops, g.tensors, g.outputs):
        steps.append(ProjectionStep(p.concat, p.conv, list(g.ops[p.concat]["ins"]), g.ops[p.conv], g.tensors))
        steps.extend(BroadcastStep(i, g.ops[i], g.tensors) for i in sorted(p.broadcasts))
    return steps


def _concat_bits_steps(g: _Graph) -> list[Step]:
    return [
        ConcatBitsStep(c.concat, g.ops[c.concat], {g.ops[i]["out"]: (i, g.ops[i]) for i in c.upsamples})
        for c in binary_read_concats(g.ops, g.outputs)
    ]


# Each fusion claims the ops of the steps it returns; the first to claim an op wins.
_FUSIONS: tuple[Callable[[_Graph], list[Step]], ...] = (
    _lincomb_group_steps,
    _chain_steps,
    _projection_steps,
    _concat_bits_steps,
)


# --------------------------------------------------------------------------------------------
# Planner
# --------------------------------------------------------------------------------------------


def plan_graph(
    graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray], prepared: Callable[[Mapping[str, Any]], Any]
) -> list[Step]:
    """The steps that compute a validated graph, in run order. ``prepared(op)``: a bconv2d op's
    weights arranged for the kernels (``kernels.prepare_weights``, cached by the caller)."""
    ops_list = [dict(op) for op in graph["ops"]]
    keep = set(graph["outputs"])
    g = _Graph(ops_list, tensors, list(graph["outputs"]), prepared)
    by_index: dict[int, Step] = {}
    claimed: set[int] = set()
    for fusion in _FUSIONS:
        for step in fusion(g):
            if claimed.isdisjoint(step.ops):
                claimed.update(step.ops)
                by_index[step.index] = step
    for index, op in enumerate(ops_list):
        if index not in claimed:
            if op["op"] == "bconv2d":
                by_index[index] = BinaryConvStep((index,), [op], tensors, prepared)
            elif is_pointwise_conv(op, tensors):
                by_index[index] = PointwiseConvStep(index, op, tensors)
            elif op["op"] == "conv2d_u8":
                by_index[index] = ImageConvStep(index, op, tensors)
            else:
                by_index[index] = FloatOpStep(index, op, tensors)
    steps = [by_index[i] for i in sorted(by_index)]
    steps = _plan_packing(steps)
    float_reads = {name for step in steps for name in step.reads}
    for step in steps:
        step.skip_writes({name for name in step.writes if name not in keep and name not in float_reads})
    _plan_frees(steps, keep)
    return steps


def _plan_packing(steps: list[Step]) -> list[Step]:
    """Decide who packs each value read by binary convs; returns the steps with any PackSteps."""
    producer = {name: step for step in steps for name in step.writes}
    readers: dict[str, list[BinaryConvStep]] = {}
    for step in steps:
        if isinstance(step, BinaryConvStep):
            readers.setdefault(step.binary_in, []).append(step)
    pack_before: dict[int, PackStep] = {}  # id of the first reader -> the step packing for it
    for name, readers_of in readers.items():
        source = producer.get(name)
        if source is not None and source.can_pack:
            source.packs = (*source.packs, name)
            shared = True
        elif len(readers_of) > 1:
            pack_before[id(readers_of[0])] = PackStep(name, readers_of[0].index)
            shared = True
        else:
            shared = False
        for reader in readers_of:
            reader.read_input_as(packed=shared)
    planned: list[Step] = []
    for step in steps:
        if id(step) in pack_before:
            planned.append(pack_before[id(step)])
        planned.append(step)
    return planned


def _plan_frees(steps: list[Step], keep: set[str]) -> None:
    """Each value (floats and sign bits) is dropped after the last step that reads it in any form."""
    last: dict[str, int] = {}
    last_bits: dict[str, int] = {}
    for position, step in enumerate(steps):
        for name in (*step.reads, *step.reads_bits):
            if name not in keep:
                last[name] = position
        for name in step.reads_bits:
            last_bits[name] = position
    for position, step in enumerate(steps):
        step.frees = tuple(name for name, p in last.items() if p == position)
        step.frees_bits = tuple(name for name, p in last_bits.items() if p == position)
