"""The embedded serving engine: scheduler, engine loop, offline ``LLM`` and server."""
