"""Benchmarks: each measures agent-fleet and its baseline in the same run and prints ratios."""
