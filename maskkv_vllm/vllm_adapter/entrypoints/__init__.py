"""The front ends: offline ``api.make_llm``/``generate``, ``serve`` (``vllm serve``
with our classes) and the per-request params check of the API server."""
