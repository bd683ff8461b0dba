"""Testbeds outside the core: other model families run through the same sampler,
cache and policies to check that nothing is LLaDA-specific."""
