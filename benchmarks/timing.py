"""Side-by-side timing on a shared, noisy machine: candidates run in interleaved rounds, results are medians.

Three clocks are kept: wall time (what a user waits), the process's CPU time (the work done by all its threads),
which barely moves when other jobs take the cores away for a while, and its user-mode part, which leaves out the
kernel's time (mostly zeroing the fresh pages a large allocation touches: glibc maps tensors above 32 MB anew each
time, and how often it returns freed heap to the kernel depends on which tensors stay alive).
"""

import contextlib
import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

CLOCKS = {
    "wall": time.perf_counter,
    "cpu": time.process_time,
    "user": lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime,
}


def wait_for_device() -> None:
    """CUDA runs asynchronously: wait for the queued work, so that a clock read after a call counts all of it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Timings:
    """Seconds per call of each candidate, per round, on each clock."""

    seconds: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {clock: {} for clock in CLOCKS})

    def add(self, clock: str, name: str, seconds: float) -> None:
        self.seconds[clock].setdefault(name, []).append(seconds)

    def add_series(self, name: str, seconds: dict[str, list[float]]) -> None:
        """Per-round seconds of something timed outside `interleaved_times`, one list per clock."""
        for clock, series in seconds.items():
            self.seconds[clock][name] = list(series)

    def median_ms(self, name: str, clock: str = "wall") -> float:
        return 1e3 * statistics.median(self.seconds[clock][name])

    def median_ratio(self, numerator: str, denominator: str, clock: str = "wall") -> float:
        """Median over rounds of the per-round ratio: robust to load that changes between rounds."""
        series = self.seconds[clock]
        return statistics.median(a / b for a, b in zip(series[numerator], series[denominator]))

    def ratios(self, numerator: str, denominator: str, clock: str = "cpu") -> list[float]:
        series = self.seconds[clock]
        return [a / b for a, b in zip(series[numerator], series[denominator])]

    def result(
        self, measurement: str, setting: str, ours: str, baseline: str, target: str = "", cpu_clock: str = "cpu"
    ) -> "Result":
        """A table line for `ours` / `baseline`: median times, median per-round ratios, the CPU ratios' spread
        (`cpu_clock` "user" for the user-mode part of the CPU time)."""
        cpu_ratios = self.ratios(ours, baseline, cpu_clock)
        return Result(
            measurement, setting, f"{self.median_ms(ours):.0f} ms", f"{self.median_ms(baseline):.0f} ms",
            self.median_ratio(ours, baseline), self.median_ratio(ours, baseline, cpu_clock), target,
            (min(cpu_ratios), max(cpu_ratios)), len(cpu_ratios),
        )

    def scale(self, name: str, factor: float) -> None:
        for series in self.seconds.values():
            series[name] = [seconds * factor for seconds in series[name]]


@contextlib.contextmanager
def call_times(module: torch.nn.Module) -> Iterator[dict[str, list[float]]]:
    """Seconds of every call of `module` on each clock, timed in place by forward hooks while the context is open."""
    seconds: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
    starts: dict[str, float] = {}

    def start(*_) -> None:
        wait_for_device()
        starts.update({clock: read() for clock, read in CLOCKS.items()})

    def stop(*_) -> None:
        wait_for_device()
        for clock, read in CLOCKS.items():
            seconds[clock].append(read() - starts[clock])

    handles = [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


def interleaved_times(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Timings:
    """Time every candidate once per round, for `rounds` rounds after `warmup` untimed ones.

    Interleaving puts the candidates under the same background load; the order flips every round so that load
    drifting within a round favours none.
    """
    timings = Timings()
    order = list(candidates)
    for round_index in range(warmup + rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            wait_for_device()
            starts = {clock: read() for clock, read in CLOCKS.items()}
            candidates[name]()
            wait_for_device()
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
    spread: tuple[float, float] | None = None  # lowest and highest per-round CPU-time ratio
    rounds: int | None = None

    def mapped(self, function: Callable[[float], float], measurement: str, ours: str, baseline: str) -> "Result":
        """This result with every ratio passed through a monotonic `function` (e.g. a time ratio to a speed ratio)."""
        spread = sorted(map(function, self.spread))
        return dataclasses.replace(
            self, measurement=measurement, ours=ours, baseline=baseline, ratio=function(self.ratio),
            cpu_ratio=function(self.cpu_ratio), spread=(spread[0], spread[1]),
        )


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())
