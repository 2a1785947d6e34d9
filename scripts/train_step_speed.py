"""Time one training step eager and under torch.compile (train.compile), side by side in one process.

A fixed random batch of crops, forward + cross-entropy + backward + Adam, no data loading; the two
modes alternate so that a noisy machine slows both alike. Prints each mode's median and the ratio:

    .venv/bin/python scripts/train_step_speed.py --config person --threads 2 --batch 16 --pairs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from seg_training.engine.config import CONFIG_DIR, load_config, model_config_for
from seg_training.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="person", help="a shipped segmentation config (default person)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=None, help="crop side (default: the config's)")
    parser.add_argument("--pairs", type=int, default=5, help="timed (eager, compiled) step pairs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = load_config("seg", CONFIG_DIR / f"{args.config}.yaml")
    crop = args.crop or int(config["data"]["crop_size"])
    classes = len(config["data"]["classes"])
    torch.manual_seed(0)
    model = create_model(model_config_for(config, classes)).train()
    images = torch.randn(args.batch, 3, crop, crop)
    targets = torch.randint(0, classes, (args.batch, crop, crop))
    optimizer = torch.optim.Adam(model.parameters(), 1e-5)
    compiled = torch.compile(model, dynamic=False)

    def step(net: Callable[[torch.Tensor], torch.Tensor]) -> float:
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    start = time.perf_counter()
    step(compiled)
    step(compiled)
    print(f"compile and two steps: {time.perf_counter() - start:.0f} s")
    step(model)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.pairs):
        times["eager"].append(step(model))
        times["compiled"].append(step(compiled))
    eager, fast = (statistics.median(times[k]) for k in ("eager", "compiled"))
    print(f"{args.config}, batch {args.batch} of {crop} px, {args.threads} thread(s), {args.pairs} pairs:")
    print(f"  eager {eager:.2f} s/step, compiled {fast:.2f} s/step, compiled / eager {fast / eager:.2f}x")


if __name__ == "__main__":
    main()
