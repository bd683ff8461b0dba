"""KV storage and the attention callables that read it."""
