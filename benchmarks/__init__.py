"""Benchmarks of MMFuser-LLaVA on the CPU (`python -m benchmarks.run_all`); `reference` is also used by the tests."""
