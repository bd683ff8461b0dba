"""The engine-core side (vLLM's ``v1/core``): the diffusion scheduler, what a request's
blocks hold before and after eviction, and the eviction metrics it records."""
