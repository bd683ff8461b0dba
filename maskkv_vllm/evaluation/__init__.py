"""Evaluation: synthetic long-context tasks, LongBench scoring, the eval harness."""
