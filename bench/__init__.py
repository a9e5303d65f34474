"""Benchmarks of tgw on this machine (`python -m bench.ingest`); see docs/benchmarks.md."""
