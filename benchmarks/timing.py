"""Side-by-side timing on a shared, noisy machine: candidates run in interleaved rounds, results are medians.

Both clocks are kept: wall time (what a user waits) and the process's CPU time (the work done by all its threads),
which barely moves when other jobs take the cores away for a while.
"""

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class Timings:
    """Seconds per call of each candidate, per round, on each clock."""

    seconds: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {clock: {} for clock in CLOCKS})

    def add(self, clock: str, name: str, seconds: float) -> None:
        self.seconds[clock].setdefault(name, []).append(seconds)

    def median_ms(self, name: str, clock: str = "wall") -> float:
        return 1e3 * statistics.median(self.seconds[clock][name])

    def median_ratio(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """Median over rounds of the per-round ratio: robust to load that changes between rounds."""
        series = self.seconds[clock]
        return statistics.median(a / b for a, b in zip(series[numerator], series[denominator]))

    def scale(self, name: str, factor: float) -> None:
        for series in self.seconds.values():
            series[name] = [seconds * factor for seconds in series[name]]


def interleaved_times(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Timings:
    """Time every candidate once per round, for `rounds` rounds after `warmup` untimed ones.

    Interleaving puts the candidates under the same background load; the order flips every round so that load
    drifting within a round favours none.
    """
    timings = Timings()
    order = list(candidates)
    for round_index in range(warmup + rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            starts = {clock: read() for clock, read in CLOCKS.items()}
            candidates[name]()
            if round_index >= warmup:
                for clock, read in CLOCKS.items():
                    timings.add(clock, name, read() - starts[clock])
    return timings


@dataclass
class Result:
    """One line of the benchmark table: `ours` against `baseline` as ratios of wall and CPU time (or of bytes)."""

    measurement: str
    setting: str
    ours: str
    baseline: str
    ratio: float
    cpu_ratio: float | None = None
    target: str = ""


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())
