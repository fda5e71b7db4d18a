"""Reference implementations of other frameworks, benchmarked against proxylab (benchmarks/side_by_side.py)."""
