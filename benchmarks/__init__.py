"""Accuracy and speed benchmarks of qsr_plugin against other quantizers and QAT libraries.

Run ``python -m benchmarks.run --quick`` (or ``make benchmarks-quick``); see README.md.
"""
