"""User-facing entry points: the OpenAI-compatible server."""
