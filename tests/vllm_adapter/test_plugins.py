"""``maskkv`` beside a second general plugin (``plugins/maskkv_dummy_model``).

Each case is a fresh process that calls vLLM's own ``load_general_plugins()``
(what every front end, engine core and worker does) under one ``VLLM_PLUGINS``
value and reports which of the two architectures got registered.

The dummy plugin is found through its entry point, not imported by hand: when
``maskkv-dummy-model`` is installed (``.ci/run`` installs it) the processes use
the installed distribution; otherwise the test writes an entry-point-bearing
``dist-info`` for it into a temporary directory, from the entry points its
``setup.cfg`` declares, and puts that directory and the plugin's source on
``PYTHONPATH`` (what ``pip install`` would add, without touching the venv).
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "maskkv_dummy_model"
DIST = "maskkv-dummy-model"

PROBE = """
import json
from vllm import ModelRegistry
from vllm.plugins import load_general_plugins
load_general_plugins()
archs = set(ModelRegistry.get_supported_archs())
print(json.dumps({a: a in archs for a in ("LLaDAModelLM", "MaskKVDummyForCausalLM")}))
"""


def _declared_entry_points() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(PLUGIN_DIR / "setup.cfg")
    return cfg.get("options.entry_points", "vllm.general_plugins").strip()


def _is_installed() -> bool:
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    """``PYTHONPATH`` that makes the dummy plugin discoverable ("" if installed)."""
    if _is_installed():
        return ""
    site = tmp_path_factory.mktemp("site")
    info = site / "maskkv_dummy_model-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[vllm.general_plugins]\n{_declared_entry_points()}\n"
    )
    return os.pathsep.join([str(site), str(PLUGIN_DIR)])


def _env(plugins: str | None, extra_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (extra_path, env.get("PYTHONPATH")) if p
        )
    return env


def _start(code: str, plugins: str | None, extra_path: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=_env(plugins, extra_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _last_line(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return out.strip().splitlines()[-1]


def test_the_dummy_plugin_declares_its_entry_point():
    assert _declared_entry_points() == "maskkv_dummy = maskkv_dummy_model:register"


def test_both_plugins_coexist_and_vllm_plugins_selects(plugin_path):
    cases = {
        None: {"LLaDAModelLM": True, "MaskKVDummyForCausalLM": True},
        "maskkv": {"LLaDAModelLM": True, "MaskKVDummyForCausalLM": False},
        "maskkv_dummy": {"LLaDAModelLM": False, "MaskKVDummyForCausalLM": True},
        "": {"LLaDAModelLM": False, "MaskKVDummyForCausalLM": False},
    }
    procs = {plugins: _start(PROBE, plugins, plugin_path) for plugins in cases}
    for plugins, proc in procs.items():
        assert json.loads(_last_line(proc)) == cases[plugins], plugins


def test_the_dummy_registration_is_lazy_and_resolves(plugin_path):
    code = (
        "import sys\n"
        "from vllm import ModelRegistry\n"
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "e = ModelRegistry.models['MaskKVDummyForCausalLM']\n"
        "assert 'maskkv_dummy_model.model' not in sys.modules\n"
        "cls = e.load_model_cls()\n"
        "print(e.module_name, e.class_name, cls.__mro__[1].__name__)\n"
    )
    out = _last_line(_start(code, "maskkv_dummy", plugin_path))
    assert out.split() == [
        "maskkv_dummy_model.model",
        "MaskKVDummyForCausalLM",
        "OPTForCausalLM",
    ]
