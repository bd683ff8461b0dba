"""The dummy model: vLLM's OPT whose logits favour token 0 (as upstream's MyOPT)."""

from __future__ import annotations

import torch
from vllm.model_executor.models.opt import OPTForCausalLM


class MaskKVDummyForCausalLM(OPTForCausalLM):
    """``OPTForCausalLM`` with every logit of token 0 raised to +1e4."""

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)
        if logits is not None:
            logits[:, 0] += 1e4
        return logits
