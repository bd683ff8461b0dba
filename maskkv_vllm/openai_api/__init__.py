"""OpenAI request bodies: the option rules both servers apply, and their mapping
to SamplingParams (no torch, no vLLM)."""
