"""Page and request bookkeeping: plain Python, no torch, no vLLM."""
