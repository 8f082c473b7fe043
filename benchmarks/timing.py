"""Side-by-side timing on a shared, noisy machine: candidates run in interleaved rounds, results are medians."""

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured in `rounds` rounds that call every candidate once, in turn.

    Interleaving puts every candidate under the same background load; `warmup` untimed rounds come first.
    """
    times = {name: [] for name in candidates}
    for round_index in range(warmup + rounds):
        for name, candidate in candidates.items():
            start = time.perf_counter()
            candidate()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def median_ms(times: dict[str, list[float]], name: str) -> float:
    return 1e3 * statistics.median(times[name])
