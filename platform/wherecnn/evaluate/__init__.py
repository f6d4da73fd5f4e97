"""Evaluation: bounded-memory metrics, baselines, activation maps and the HTML report."""
