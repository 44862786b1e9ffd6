"""Benchmarks: comparisons and the report (``benchmarks/REPORT.md``)."""
