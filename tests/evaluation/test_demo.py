"""``maskkv demo`` on the shipped retrieval model (the README's first command)."""

from __future__ import annotations

import pytest

from maskkv_vllm.cli import main
from maskkv_vllm.evaluation.demo import DemoConfig


def test_demo_retrieves_with_five_percent_of_the_prompt_kv(capsys):
    assert main(["demo", "--prompt-tokens", "512", "--samples", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "B=26 entries per head per layer" in lines[0]
    for line in lines[1:3]:
        # Counted by the engine: 2 layers x 4 KV heads x 507 prompt tokens (BOS,
        # 84 records of 6 tokens, "? kNNN") in 2 x 4 x 32 pages of 16.
        assert "of 4056 entries" in line and "pages vs 256" in line
        kept = int(line.split("(")[1].split(" of ")[0])
        assert 0.04 <= kept / 4056 <= 0.06
    # Greedy and seeded: the shipped weights answer these two right either way.
    assert lines[1].count("correct") == 2 and lines[2].count("correct") == 2
    assert lines[3].startswith("maskkv: 2/2 correct keeping 5.")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, "fraction=0.0 must be in"),
        ({"samples": 0}, "samples=0 must be"),
        ({"prompt_tokens": 8}, "prompt_tokens=8 must be"),
    ],
)
def test_demo_config_names_a_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)
