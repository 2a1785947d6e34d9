"""One latency row of docs/results.md, measured in the fresh process this module runs in.

    python -m seg_bench.latency_probe packed|torch TARGET --repeats N --threads T [--raw]

Why a process of its own (seg_bench.results.isolated_latency): the kernels' thread pool and
PyTorch's OpenMP pool both spin after their work, so timing both in one process slows each down.
Prints one JSON line: milliseconds per size.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_bench.latency_probe")
    parser.add_argument("kind", choices=["packed", "torch"])
    parser.add_argument("target", type=Path, help="a .gnpk file (packed) or a training config (torch)")
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--raw", action="store_true", help="packed: the network alone, no input rules")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from seg_service.runtime import set_num_threads

    set_num_threads(args.threads)
    from .results import packed_latency, torch_latency

    if args.kind == "packed":
        result = packed_latency(args.target, args.repeats, raw=args.raw)
    else:
        result = torch_latency(args.target, 2, args.repeats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
