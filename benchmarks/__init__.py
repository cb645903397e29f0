"""Benchmarks of flask-ias-pkce: ratios against baselines measured in the same run."""
