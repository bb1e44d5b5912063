"""Benchmarks of the service against the plain PyTorch loop (run: make bench)."""
