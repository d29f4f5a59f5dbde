"""Scoring: confusion matrix, per-class and instance metrics, the evaluator, the metrics JSON, reports and plots."""
