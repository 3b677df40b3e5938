"""Evaluation: sample-quality metrics, importance weights and resampling, plots."""
