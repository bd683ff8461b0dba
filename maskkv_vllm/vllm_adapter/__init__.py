"""vLLM integration: the only subpackage that imports vLLM.

Importing this package imports nothing heavy. ``plugin.register`` (the
``vllm.general_plugins`` entry point) registers LLaDA's config class with
transformers and its architecture with vLLM's ``ModelRegistry``; ``hf_config``
and ``model`` hold the classes it registers, each imported only when used.
"""
