"""``serve.main``: vLLM's OpenAI server with LLaDA + MaskKV, queried by ``openai``.

Starts the server in a subprocess on 127.0.0.1 (tiny checkpoint, ~40 s to become
healthy on 2 cores), sends ``/v1/completions`` with MaskKV params as
``vllm_xargs`` and compares with the embedded engine.
"""

from __future__ import annotations

import os
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

_LOG: dict = {}
SNAPKV_4 = '{"maskkv": {"kv_policy": "snapkv", "kv_budget": 4}}'


@pytest.fixture
def server_log(server):
    return _LOG["path"]


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory, start_server):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    env.pop("VLLM_PLUGINS", None)  # serve.main sets "maskkv"

    def cmd(port):
        argv = [
            str(vllm_tiny_dir), "--port", str(port), "--dtype", "float32",
            "--max-model-len", "512", "--served-model-name", "tiny",
            "--additional-config", SNAPKV_4,
        ]  # fmt: skip
        serve = "maskkv_vllm.vllm_adapter.entrypoints.serve"
        code = f"from {serve} import main; main({argv!r})"
        return [sys.executable, "-c", code]

    srv = start_server(cmd, env, log)
    _LOG["path"] = log
    print(f"maskkv vllm-serve healthy after {srv.startup_s:.0f} s")
    yield srv.port
    srv.stop()


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
    assert "is not an LLaDA checkpoint" in err[-1] and "LlamaForCausalLM" in err[-1]
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
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full")
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
    ref = EmbeddedLLM(str(vllm_tiny_dir), kv_policy="full")
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
