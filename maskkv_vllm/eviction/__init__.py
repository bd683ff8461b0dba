"""KV eviction: scorers, budget allocators that wrap them, and the policy registry."""
