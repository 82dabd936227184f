"""Monitoring a served model: out-of-distribution scores and drift tests (pure numpy, no torch)."""
