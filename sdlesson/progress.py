"""A training run's progress, shown in a terminal or in a notebook (the Trainer's display, apart from its loop)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """The progress of a fit. A terminal gets a tqdm bar, redrawn rarely when the output is a log file, and nothing
    left behind. A notebook gets one line of plain text, updated in place, which ends as the fit's summary
    (steps, final loss, wall time): that line, not a widget's "0%", is what a stored notebook shows."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.notebook = enabled and "ipykernel" in sys.modules and not sys.stderr.isatty()
        self.handle, self.bar, self.shown = None, None, 0.0
        if self.notebook:
            from IPython.display import display

            self.handle = display({"text/plain": f"training: step {initial}/{total}"}, raw=True, display_id=True)
        elif enabled:
            quiet_log = not sys.stderr.isatty()  # in a log file a redrawn bar becomes thousands of lines
            self.bar = tqdm(total=total, initial=initial, desc="training", leave=False,
                            mininterval=30 if quiet_log else 0.1)

    @staticmethod
    def recent_loss(history: list[float]) -> float:
        return sum(history[-25:]) / len(history[-25:])

    def update(self, step: int, history: list[float]):
        if self.bar is not None:
            self.bar.update(1)
            if step % 25 == 0 or step == self.total:
                self.bar.set_postfix(loss=f"{self.recent_loss(history):.4f}")
        elif self.handle is not None and time.perf_counter() - self.shown > 1.0:
            self.shown = time.perf_counter()
            self.handle.update({"text/plain": f"training: step {step}/{self.total}, "
                                              f"loss {self.recent_loss(history):.4f}"}, raw=True)

    def close(self, step: int, history: list[float], seconds: float):
        if self.bar is not None:
            self.bar.close()
        elif self.handle is not None and history:
            self.handle.update({"text/plain": f"trained {step} steps: loss {self.recent_loss(history):.4f} "
                                              f"(mean of the last {min(25, len(history))}), {seconds:.0f} s"}, raw=True)
