"""Peak memory of one engine, measured in the fresh process this module runs in.

    python -m seg_bench.memory_probe SPEC_JSON      (see seg_bench.bench.measure_peak_memory)

Imports only what the engine needs (the runtime probe never imports torch), resets the peak RSS
after the imports where Linux allows it (/proc/self/clear_refs), loads the model, runs it
``runs`` times and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def status_mb(field: str) -> float:
    """A /proc/self/status memory field in MB (elsewhere: the peak from getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    h, w = spec["size"]
    x = np.random.default_rng(0).standard_normal((h, w, 3)).astype(np.float32)
    run: Callable[[], Any]
    if spec["engine"] == "runtime":
        from seg_service.runtime import load_model, set_num_threads

        set_num_threads(spec["threads"])
        peak_reset, base = reset_peak(), status_mb("VmRSS")
        packed = load_model(spec["path"])

        def run() -> Any:
            return packed.forward(x)
    else:
        import torch

        from seg_training.models import create_model

        torch.set_num_threads(spec["threads"])
        xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
        peak_reset, base = reset_peak(), status_mb("VmRSS")
        model = create_model(spec["config"]).eval()

        def run() -> Any:
            with torch.inference_mode():
                return model(xt)

    for _ in range(spec["runs"]):
        run()
    return {
        "base_rss_mb": base,
        "peak_rss_mb": status_mb("VmHWM"),
        "peak_reset": peak_reset,
        "torch_imported": "torch" in sys.modules,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(json.dumps(probe(json.loads(args[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
