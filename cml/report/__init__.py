"""Seeing the result: copy check, weight sweep grids, metrics, loss curves, report.md (`cml check`)."""
