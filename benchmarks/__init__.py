"""Benchmarks of eventcomposition: overhead, latency, failover, throughput, cost and
allocation at scale.

Not tests: run them with ``just bench`` (``python -m benchmarks``); ``--quick`` is a
smoke run of under a minute, ``--only overhead,first-event`` selects some. Each
benchmark prints a table and writes its results as JSON into ``benchmarks/results/``.
"""
