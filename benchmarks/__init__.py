"""Benchmarks of sugar-kernels: ``python -m benchmarks.<name> --help``; ``make bench`` runs them."""
