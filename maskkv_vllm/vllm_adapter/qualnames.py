"""Names of our classes that vLLM resolves from strings, for the modules below them.

``engine_config`` puts these names on vLLM's config for an LLaDA checkpoint; it sits
below the packages the classes live in, so it takes their names from here rather
than importing those packages.
"""

VALIDATOR_CLS = "maskkv_vllm.vllm_adapter.entrypoints.validation:MaskKVParamsValidator"
"""``entrypoints.validation.MaskKVParamsValidator`` as the ``<module>:<type>`` name
vLLM's ``logits_processors`` takes."""
