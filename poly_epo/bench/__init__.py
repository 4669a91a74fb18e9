"""Benchmarks that print numbers: `python -m poly_epo.bench {sampler,advantages}`."""
