"""Benchmarks: twinfer's two paths measured against the naive way of doing the same job."""
