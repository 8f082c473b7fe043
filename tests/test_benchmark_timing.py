"""The benchmarks' side-by-side timing: interleaved order, per-round ratios, and the clock each column reads."""

import torch

from benchmarks.timing import CLOCKS, Timings, call_times, interleaved_times


def test_rounds_alternate_the_order_and_skip_the_warmup():
    calls = []
    timings = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    for clock in CLOCKS:
        assert {name: len(series) for name, series in timings.seconds[clock].items()} == {"a": 3, "b": 3}


def test_a_result_reads_the_chosen_cpu_clock_and_medians_per_round_ratios():
    timings = Timings()
    for ours, baseline in [(1.1, 1.0), (3.0, 2.0), (2.2, 2.0)]:  # per-round ratios 1.1, 1.5, 1.1
        timings.add("wall", "ours", ours), timings.add("wall", "baseline", baseline)
        timings.add("cpu", "ours", ours), timings.add("cpu", "baseline", baseline)
    for ours, baseline in [(1.0, 1.0), (1.2, 1.0), (0.9, 1.0)]:
        timings.add("user", "ours", ours), timings.add("user", "baseline", baseline)
    cpu = timings.result("row", "setting", "ours", "baseline")
    assert abs(cpu.cpu_ratio - 1.1) < 1e-12 and cpu.spread == (1.1, 1.5) and cpu.rounds == 3
    user = timings.result("row", "setting", "ours", "baseline", cpu_clock="user")
    assert user.cpu_ratio == 1.0 and user.spread == (0.9, 1.2)
    assert user.ratio == cpu.ratio  # the wall-clock column does not change with it


def test_a_module_is_timed_in_place_once_per_call():
    module = torch.nn.Linear(4, 4)
    with call_times(module) as seconds:
        module(torch.ones(2, 4)), module(torch.ones(2, 4))
    module(torch.ones(2, 4))  # after the context: not timed
    assert {clock: len(series) for clock, series in seconds.items()} == {clock: 2 for clock in CLOCKS}
    assert all(value >= 0 for series in seconds.values() for value in series)
    assert not module._forward_hooks and not module._forward_pre_hooks
