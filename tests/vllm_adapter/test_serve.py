"""``serve.main``: vLLM's OpenAI server with LLaDA + MaskKV, queried by ``openai``.

Starts the server in a subprocess on 127.0.0.1 (tiny checkpoint, ~40 s to become
healthy on 2 cores), sends ``/v1/completions`` with MaskKV params as
``vllm_xargs`` and compares with the embedded engine.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from maskkv_vllm.engine.llm import LLM as EmbeddedLLM  # noqa: E402
from maskkv_vllm.sampling_params import SamplingParams  # noqa: E402
from maskkv_vllm.vllm_adapter.entrypoints.serve import serve_args  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(llada_server):
    return llada_server.port


@pytest.fixture
def server_log(llada_server):
    return llada_server.log


def test_serve_args_bind_loopback_and_add_the_template_only_when_absent():
    from maskkv_vllm.models.tokenizer import CHAT_TEMPLATE

    args = serve_args(["m"])
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--chat-template") + 1] == CHAT_TEMPLATE
    mine = serve_args(["m", "--host", "0.0.0.0", "--chat-template=t.jinja"])
    assert mine == ["m", "--host", "0.0.0.0", "--chat-template=t.jinja"]
    # The engine settings come from the model's config hook, not from flags.
    assert "--scheduler-cls" not in args and "--worker-cls" not in args


def test_the_pinned_template_renders_what_the_embedded_engine_renders(vllm_tiny_dir):
    import jinja2

    from maskkv_vllm.models.loader import load_checkpoint
    from maskkv_vllm.models.tokenizer import CHAT_TEMPLATE

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    _, tok = load_checkpoint(vllm_tiny_dir)
    rendered = jinja2.Template(CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=True
    )
    assert rendered == tok.render_chat(messages)


def test_a_non_llada_checkpoint_is_refused_before_vllm_starts(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
    )
    code = (
        "from maskkv_vllm.vllm_adapter.entrypoints.serve import main; "
        "raise SystemExit(main())"
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("maskkv: error: ")
    assert (
        "is not an LLaDA or Dream checkpoint" in err[-1]
        and "LlamaForCausalLM" in err[-1]
    )
    assert time.monotonic() - t0 < 60  # no engine was started


@pytest.mark.parametrize(
    ("xargs", "named"),
    [
        # gen_length = max_tokens = 16; 5 does not divide it.
        ({"maskkv_block_length": 5}, ["maskkv_block_length=5", "block_length=5"]),
        ({"maskkv_kv_policy": "nope"}, ["maskkv_kv_policy='nope'"]),
        ({"maskkv_steps": 0}, ["steps=0 must be a positive integer"]),
    ],
)
def test_bad_params_get_http_400_naming_the_value(server, xargs, named):
    import urllib.request

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=16,
            extra_body={"vllm_xargs": xargs},
        )  # fmt: skip
    assert err.value.status_code == 400
    for text in named:
        assert text in err.value.message
    # Refused in the front end: the engine core is still alive.
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/health", timeout=5) as r:
        assert r.status == 200


def test_completions_through_the_openai_client(server, vllm_tiny_dir):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    resp = client.completions.create(
        model="tiny",
        prompt=["Hello", "The cat"],
        max_tokens=16,
        temperature=0.0,
        extra_body={
            "vllm_xargs": {"maskkv_block_length": 8, "maskkv_steps": 8},
            "return_token_ids": True,
        },
    )
    # Defaults from --additional-config: snapkv with B = 4 (prompts of 6-8 tokens).
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="snapkv", kv_budget=4
    )
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    want = ref.generate(["Hello", "The cat"], params, use_tqdm=False)
    got = sorted(resp.choices, key=lambda c: c.index)
    assert [c.token_ids for c in got] == [w.token_ids for w in want]
    # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8
    # sequence (random tiny weights emit raw bytes); the rest is identical.
    assert [c.text.rstrip("\ufffd") for c in got] == [
        w.text.rstrip("\ufffd") for w in want
    ]
    assert resp.usage.completion_tokens == 32


def test_chat_uses_llada_s_pinned_template(server, vllm_tiny_dir):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    messages = [{"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0.0,
        extra_body={"vllm_xargs": {"maskkv_block_length": 8, "maskkv_steps": 8},
                    "return_token_ids": True},
    )  # fmt: skip
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, kv_policy="snapkv", kv_budget=4
    )
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    (want,) = ref.chat(messages, params, use_tqdm=False)
    got = resp.choices[0].token_ids
    assert got[: len(want.token_ids)] == want.token_ids


def test_eviction_is_logged(server_log):
    # snapkv B = 4 by --additional-config: every request evicts at step 0
    text = server_log.read_text()
    assert "maskkv: request" in text and "freed" in text


def test_eviction_is_on_vllm_s_metrics(server):
    # Counted in the engine-core process, served by the API process (issue 13).
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="none")
    client.completions.create(
        model="tiny", prompt="a prompt longer than four tokens", max_tokens=8,
        extra_body={"vllm_xargs": {"maskkv_block_length": 8, "maskkv_steps": 8}},
    )  # fmt: skip
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("maskkv:") and 'model_name="tiny"' in line:
            name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + value
    assert values["maskkv:kv_blocks_freed_total"] > 0
    kept = values["maskkv:prompt_kv_entries_kept_total"]
    evicted = values["maskkv:prompt_kv_entries_evicted_total"]
    assert kept > 0 and evicted > 0
    assert values["maskkv:prompt_kv_kept_fraction_count"] >= 1
    assert "vllm:num_requests_running" in text  # vLLM's own metrics are still there


# -- issue 25: the embedded server's option rules, through real HTTP -------------


def _client(server):
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server}/v1", api_key="none", max_retries=0
    )


def _refused(server, chat, stream, param, message, **kwargs):
    client = _client(server)
    if chat:
        call = client.chat.completions.create
        kwargs["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        call = client.completions.create
        kwargs["prompt"] = "Hello"
    with pytest.raises(openai.BadRequestError) as err:
        call(model="tiny", max_tokens=16, stream=stream, **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert message in err.value.message
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/health", timeout=5) as r:
        assert r.status == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("chat", "kwargs", "message"),
    [
        (False, {"logprobs": 2}, "logprobs=2 is not supported"),
        (True, {"logprobs": True, "top_logprobs": 2}, "logprobs=True is not"),
    ],
)
def test_logprobs_are_a_400_not_a_500(server, chat, kwargs, message, stream):
    # Issue 25, item 2: was HTTP 500 (IndexError in vLLM's completion serving).
    _refused(server, chat, stream, "logprobs", message, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"extra_body": {"min_p": 0.5}}, "min_p", "min_p=0.5 is not supported"),
        ({"stop": ["x"]}, "stop", "stop=['x'] is not supported"),
        ({"temperature": "hot"}, "temperature", "temperature='hot' must be a number"),
        ({"extra_body": {"ignore_eos": True}}, "ignore_eos", "ignore_eos=True is"),
    ],
)
def test_options_the_engine_cannot_honour_are_refused_by_name(
    server, kwargs, param, message
):
    # Issue 25, item 3: each returned 200 (n=2: two identical answers).
    _refused(server, False, False, param, message, **kwargs)


def _embedded(vllm_tiny_dir, prompt, **params):
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full", dtype="float32")
    (out,) = ref.generate([prompt], SamplingParams(**params), use_tqdm=False)
    return out.token_ids


def test_temperature_and_seed_are_honoured_as_by_the_embedded_engine(
    server, vllm_tiny_dir
):
    # Issue 25, item 3: temperature was ignored (greedy answer, 200).
    prompt, shape = "Once upon a time", {"gen_length": 16, "block_length": 8}
    resp = _client(server).completions.create(
        model="tiny", prompt=prompt, max_tokens=16, temperature=0.9, seed=5,
        extra_body={"block_length": 8, "return_token_ids": True},
    )  # fmt: skip
    shape.update(kv_policy="snapkv", kv_budget=4, steps=16)  # the server's defaults
    sampled = _embedded(vllm_tiny_dir, prompt, **shape, temperature=0.9, seed=5)
    greedy = _embedded(vllm_tiny_dir, prompt, **shape)
    assert sampled != greedy
    assert resp.choices[0].token_ids == sampled


LONG_PROMPT = "The quick brown fox jumps over the lazy dog near the river bank " * 3


def test_diffusion_options_as_top_level_fields_are_honoured(server, vllm_tiny_dir):
    # Issue 25, item 4: extra_body kv_policy/steps/... were dropped (the server's
    # snapkv B = 4 ran instead); now they ride as vllm_xargs.
    extra = {"kv_policy": "full", "block_length": 8, "steps": 8}
    resp = _client(server).completions.create(
        model="tiny", prompt=LONG_PROMPT, max_tokens=16,
        extra_body={**extra, "return_token_ids": True},
    )  # fmt: skip
    full = _embedded(vllm_tiny_dir, LONG_PROMPT, gen_length=16, **extra)
    evicted = _embedded(
        vllm_tiny_dir, LONG_PROMPT, gen_length=16, block_length=8, steps=8,
        kv_policy="snapkv", kv_budget=4,
    )  # fmt: skip
    assert full != evicted
    assert resp.choices[0].token_ids == full


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"kv_budget": 0}, "kv_budget", "kv_budget=0 must be a positive integer"),
        ({"kv_policy": "nope"}, "kv_policy", "kv_policy='nope' is not one of"),
        ({"block_length": 5}, "max_tokens", "max_tokens=16 is not a multiple of"),
        (
            {"kv_budget": 8, "vllm_xargs": {"maskkv_kv_budget": 16}},
            "kv_budget",
            "kv_budget=8 but vllm_xargs has maskkv_kv_budget=16",
        ),
    ],
)
def test_bad_top_level_diffusion_options_are_refused_by_name(
    server, extra, param, message
):
    _refused(server, False, False, param, message, extra_body=extra)
