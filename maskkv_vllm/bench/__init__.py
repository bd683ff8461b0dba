"""``maskkv bench``: the performance figures, each measured side by side in one run."""
