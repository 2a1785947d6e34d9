"""train.time_budget_minutes: fit the epoch count to a wall-clock budget, once, from measured epochs.

The run times its first epochs (the second one of this process, or the last planned one if that
comes first), then fixes the total epoch count so the whole run, validation and checkpoint writes
included, ends within the budget. The decision is stored in the checkpoint (``budget_applied``),
so a resumed run keeps the epoch count instead of fitting it again.
"""

from __future__ import annotations

import time


def fit_epochs_to_budget(
    seconds_left: float,
    epochs_done: int,
    epochs: int,
    epoch_seconds: float,
    val_to_train: float,
    eval_every: int,
) -> int:
    """Total epochs that fit in ``seconds_left`` more, from the last epoch's training time.

    Validation is a forward pass over the val set every ``eval_every`` epochs; a forward pass costs
    about a third of a training step, so it adds ``val_to_train / 3 / eval_every`` per epoch.
    Never fewer than the epochs done, never more than asked for.
    """
    per_epoch = epoch_seconds * (1.0 + val_to_train / 3.0 / max(1, eval_every))
    fit = epochs_done + int(max(0.0, seconds_left) // max(per_epoch, 1e-9))
    return max(epochs_done, min(epochs, fit))


class TimeBudget:
    """The run's clock (this process's start and the time spent before a resume) and the budget decision.

    ``minutes`` 0 or None: no budget. ``applied``: the decision was taken (by an earlier process of
    this run, when resumed).
    """

    def __init__(
        self, minutes: float | None, elapsed_before: float = 0.0, applied: bool = False, start_epoch: int = 0
    ) -> None:
        self.seconds = 60.0 * float(minutes or 0)
        self.elapsed_before = elapsed_before  # wall time of the run before a resume
        self.applied = applied
        self.start_epoch = start_epoch
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far ("finished in" counts the killed part too)."""
        return self.elapsed_before + time.perf_counter() - self.started

    def due(self, epochs_done: int, epochs: int) -> bool:
        """Whether to decide now: two epochs timed in this process (the first one pays for warm-up),
        or the last planned epoch done."""
        return (
            bool(self.seconds)
            and not self.applied
            and (epochs_done - self.start_epoch >= 2 or epochs_done == epochs)
        )

    def fit(
        self, epochs_done: int, epochs: int, epoch_seconds: float, val_to_train: float, eval_every: int
    ) -> int:
        """The total epoch count that fits (see fit_epochs_to_budget); marks the budget applied."""
        self.applied = True
        return fit_epochs_to_budget(
            self.seconds - self.elapsed(), epochs_done, epochs, epoch_seconds, val_to_train, eval_every
        )
