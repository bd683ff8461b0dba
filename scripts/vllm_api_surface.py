"""Snapshot of the vLLM API surface the adapter uses, read by AST (never imported).

    python scripts/vllm_api_surface.py PATH [-o patches/api_surface/vllm-X.json]

PATH is a source tree (the directory holding ``vllm/``, or ``vllm/`` itself, e.g.
an installed ``site-packages/vllm``) or a wheel. The output is deterministic JSON:
``{"generator", "vllm_version", "symbols": {key: entry}}``, one symbol a line.

**Keys** name what the adapter touches, by the path it uses: ``vllm.envs`` (a
module), ``vllm.v1.request:Request`` (``from vllm.v1.request import Request``),
``vllm.v1.request:Request.num_prompt_tokens`` (an attribute reached from it),
``vllm.distributed:get_tp_group().world_size`` (an attribute of a call's result).
**Entries** give ``kind`` (module, class, function, method, property, attribute;
instance: a call's result of a known vLLM class; value: a call's result of no
known class; external: not in vLLM's source, maybe inherited from a non-vLLM
base; absent) and ``defined_in``; functions and methods their ``params`` as Python
writes them (``"name"``, ``"name=default"`` with the default's source text,
``"*args"``, ``"**kwargs"``, the markers ``"/"`` and ``"*"``; annotations left
out) and ``decorators``; classes their ``bases``, ``decorators``, ``init`` (the
constructor's params, from ``__init__`` or the dataclass/NamedTuple fields) and
``init_from``; any entry whose value is a vLLM class has ``type``. An attribute
chain is followed only through entries with a ``type`` (or modules, classes):
``expected_keys`` states the rule, and the test applies it to a snapshot.

**Derived** from the AST of every file under ``maskkv_vllm/vllm_adapter/``:
``import vllm...`` and ``from vllm... import X`` anywhere in a file (lazy ones
in functions and ``TYPE_CHECKING`` blocks too); attribute chains on those names,
on parameters annotated with them and on locals assigned from them or from their
calls; for each class whose bases include a vLLM class (directly or through one
of our mixins): the base, every method we define (an override, or ``absent``,
which guards against vLLM adding a method of that name), every ``super().m``
and every ``self.x...`` chain in its methods.

**Listed by hand** (``EXPLICIT``, ``PROTOCOLS``): internals from
``patches/README.md`` reached through objects the AST cannot type (``Any``
parameters, subscripts, the ``envs`` module passed as an argument), and the
vLLM protocols our classes implement without subclassing them.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_DIR = ROOT / "maskkv_vllm" / "vllm_adapter"
ADAPTER_PACKAGE = "maskkv_vllm.vllm_adapter"

EXPLICIT = (
    "vllm:__version__",  # version.installed_vllm_version (getattr)
    # selection.apply_env_defaults gets vllm.envs as an argument
    "vllm.envs:environment_variables",
    "vllm.envs:VLLM_USE_V2_MODEL_RUNNER",
    "vllm.envs:enable_envs_cache",
    # selection.worker_cls_for gets current_platform as an argument
    "vllm.platforms:current_platform.is_cpu",
    "vllm.platforms:current_platform.is_cuda",
    "vllm.platforms:current_platform.device_name",
    # plugin._registered_class_path (getattr)
    "vllm:ModelRegistry.models",
    "vllm.model_executor.models.registry:_LazyRegisteredModel.module_name",
    "vllm.model_executor.models.registry:_LazyRegisteredModel.class_name",
    # requests, the scheduler output and the runner's batch, reached through
    # Any-typed parameters, subscripts or dict lookups
    "vllm.v1.request:Request.is_finished",
    "vllm.v1.request:Request.num_computed_tokens",
    "vllm.v1.core.sched.output:SchedulerOutput.finished_req_ids",
    "vllm.v1.core.sched.output:SchedulerOutput.num_scheduled_tokens",
    "vllm.v1.core.sched.output:SchedulerOutput.scheduled_new_reqs",
    "vllm.v1.core.sched.output:SchedulerOutput.scheduled_cached_reqs",
    "vllm.v1.core.sched.output:CachedRequestData.resumed_req_ids",
    "vllm.v1.core.sched.output:NewRequestData.req_id",
    "vllm.v1.core.sched.output:NewRequestData.sampling_params",
    "vllm.v1.core.sched.output:NewRequestData.prompt_token_ids",
    "vllm.v1.worker.gpu_input_batch:CachedRequestState.block_ids",
    "vllm.v1.worker.gpu_input_batch:CachedRequestState.sampling_params",
    "vllm.v1.worker.gpu_input_batch:CachedRequestState.prompt_token_ids",
    "vllm.v1.worker.gpu_input_batch:InputBatch.req_ids",
    "vllm.v1.worker.gpu_input_batch:InputBatch.token_ids_cpu",
    "vllm.v1.worker.gpu_input_batch:InputBatch.num_computed_tokens_cpu",
    "vllm.v1.core.kv_cache_coordinator:KVCacheCoordinator.single_type_managers",
    "vllm.v1.core.block_pool:BlockPool.num_gpu_blocks",
    "vllm.v1.core.block_pool:BlockPool.get_new_blocks",
    "vllm.v1.core.block_pool:BlockPool.free_blocks",
    # worker/model.py: the pool layer's cache tensor, the layer-name rule
    "vllm.model_executor.layers.attention.prefill_prefix_lm_attention"
    ":PrefillPrefixLMAttention.kv_cache",
    "vllm.model_executor.models.utils:extract_layer_index",
    # front end: validation path, chat template, metrics registry
    "vllm.v1.engine.input_processor:InputProcessor._validate_params",
    "vllm.renderers.chat_utils:load_chat_template",
    "vllm.v1.metrics.prometheus:get_prometheus_registry",
)
"""Keys the AST of the adapter cannot derive (see patches/README.md)."""

PROTOCOLS = {
    f"{ADAPTER_PACKAGE}.worker.model:LLaDAForDiffusionLM": (
        "vllm.model_executor.models.interfaces_base:VllmModelForTextGeneration"
    ),
    f"{ADAPTER_PACKAGE}.engine_config:LLaDAEngineConfig": (
        "vllm.model_executor.models.config:VerifyAndUpdateConfig"
    ),
}
"""Our class -> the vLLM protocol it implements (checked like a base class)."""

GENERATOR = "scripts/vllm_api_surface.py"
HEADER = ("generator", "vllm_version")
_SEGMENT = re.compile(r"\w+(\(\))?|\(\)")


# -- the adapter side: which keys it uses -----------------------------------


@dataclass
class Use:
    """One use of a vLLM key in the adapter.

    ``how`` is import, chain, call, base, override, super, self (a ``self.x``
    chain), self_call or explicit; ``node`` is our ``FunctionDef`` for an
    override, the ``Call`` for super, call and self_call.
    """

    key: str
    how: str
    where: str
    node: ast.AST | None = None


@dataclass
class _File:
    module: str
    rel: str
    tree: ast.Module
    vllm_imports: list[tuple[str, str]] = field(default_factory=list)
    local_names: dict[str, str] = field(default_factory=dict)

    @property
    def roots(self) -> dict[str, list[str]]:
        """Chain roots of the whole file: each vLLM import name -> its keys (a
        name imported from two places, as a fallback, has both)."""
        roots: dict[str, list[str]] = {}
        for name, key in self.vllm_imports:
            roots.setdefault(name, []).append(key)
        return roots


def _import_key(node: ast.Import | ast.ImportFrom, alias: ast.alias) -> str | None:
    if isinstance(node, ast.Import):
        root = alias.name.split(".")[0]
        return alias.name if alias.asname else root
    return f"{node.module}:{alias.name}"


def _scan_imports(f: _File) -> None:
    for node in ast.walk(f.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "vllm" or a.name.startswith("vllm."):
                    f.vllm_imports.append((a.asname or "vllm", _import_key(node, a)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            for a in node.names:
                if top == "vllm":
                    f.vllm_imports.append((a.asname or a.name, _import_key(node, a)))
                elif node.module.startswith(ADAPTER_PACKAGE):
                    f.local_names[a.asname or a.name] = f"{node.module}:{a.name}"


def _load_adapter(adapter_dir: Path) -> list[_File]:
    files = []
    for path in sorted(adapter_dir.rglob("*.py")):
        rel = path.relative_to(adapter_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join([ADAPTER_PACKAGE, *parts])
        f = _File(module, path.relative_to(adapter_dir).as_posix(), ast.parse(
            path.read_text(), str(path)))  # fmt: skip
        _scan_imports(f)
        files.append(f)
    return files


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None unless it is names all the way down."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


def _outer_attributes(tree: ast.AST) -> list[ast.Attribute]:
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and id(n) not in inner
    ]


def join_key(key: str, attr: str) -> str:
    """Attribute ``attr`` of ``key``: ``m`` -> ``m:a``, ``m:A`` -> ``m:A.a``."""
    return f"{key}.{attr}" if ":" in key else f"{key}:{attr}"


def _prefixes(root: str, attrs: list[str]) -> list[str]:
    out = [root] if root.endswith("()") else []
    for attr in attrs:
        out.append(join_key(out[-1] if out else root, attr))
    return out


def _key_of_expr(node: ast.AST, roots: dict[str, list[str]]) -> list[str]:
    """Keys of a chain (``x.a.b``) or a chain's call (``x.a()``) over ``roots``."""
    call = isinstance(node, ast.Call)
    found = _chain(node.func if call else node)
    if found is None or found[0] not in roots:
        return []
    keys = roots[found[0]]
    for attr in found[1]:
        keys = [join_key(k, attr) for k in keys]
    return [k + "()" for k in keys] if call else keys


def _local_roots(fn: ast.AST, f: _File, roots: dict[str, list[str]]) -> None:
    """Add parameters annotated with a vLLM name and locals assigned from chains."""
    args = fn.args
    for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
        ann = a.annotation
        if isinstance(ann, ast.Name) and ann.id in f.roots:
            roots[a.arg] = f.roots[ann.id]
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            keys = _key_of_expr(node.value, {**f.roots, **roots})
            if isinstance(target, ast.Name) and keys:
                roots[target.id] = keys


def _chain_uses(tree: ast.AST, roots: dict[str, list[str]], f: _File) -> list[Use]:
    uses = []
    for node in _outer_attributes(tree):
        found = _chain(node)
        if found and found[0] in roots:
            for key in roots[found[0]]:
                keys = _prefixes(key, found[1])
                uses += [Use(k, "chain", _where(f, node)) for k in keys]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for key in _key_of_expr(node, roots):
                uses.append(Use(key[:-2], "call", _where(f, node), node))
    return uses


def _where(f: _File, node: ast.AST) -> str:
    return f"{f.rel}:{getattr(node, 'lineno', 0)}"


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [n for n in ast.walk(tree) if isinstance(n, kinds)]


def _classes(files: list[_File]) -> dict[str, tuple[_File, ast.ClassDef]]:
    return {
        f"{f.module}:{n.name}": (f, n)
        for f in files
        for n in ast.walk(f.tree)
        if isinstance(n, ast.ClassDef)
    }


def _bases(qual: str, classes: dict, seen: frozenset = frozenset()) -> tuple:
    """(vLLM base keys, our classes in MRO order) of one of our classes."""
    f, node = classes[qual]
    vllm, ours = [], [qual]
    if qual in PROTOCOLS:
        vllm.append(PROTOCOLS[qual])
    for base in node.bases:
        name = base.value if isinstance(base, ast.Subscript) else base
        if not isinstance(name, ast.Name):
            continue
        if name.id in f.roots:
            vllm += f.roots[name.id]
            continue
        local = f.local_names.get(name.id, f"{f.module}:{name.id}")
        if local in classes and local not in seen:
            more_vllm, more_ours = _bases(local, classes, seen | {qual})
            vllm += more_vllm
            ours += more_ours
    return vllm, ours


def _subclass_uses(qual: str, classes: dict) -> list[Use]:
    vllm, ours = _bases(qual, classes)
    if not vllm:
        return []
    f, node = classes[qual]
    uses = [Use(b, "base", _where(f, node)) for b in vllm]
    for own in ours:
        of, onode = classes[own]
        for fn in onode.body:
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                uses += [
                    Use(join_key(b, fn.name), "override", _where(of, fn), fn)
                    for b in vllm
                ]
        real = [b for b in vllm if b != PROTOCOLS.get(qual)]
        for fn in _functions(onode) if real else []:
            roots = {"self": real, "cls": real}
            _local_roots(fn, of, roots)
            uses += [_as_self(u, real) for u in _chain_uses(fn, roots, of)]
            uses += _super_uses(fn, real, of)
    return uses


def _as_self(use: Use, bases: list[str]) -> Use:
    """A chain or call reached through ``self``/``cls``: how self / self_call."""
    if not any(use.key.startswith(f"{b}.") for b in bases):
        return use
    use.how = "self" if use.how == "chain" else "self_call"
    return use


def _super_uses(fn: ast.AST, bases: list[str], f: _File) -> list[Use]:
    uses = []
    for node in ast.walk(fn):
        func = node.func if isinstance(node, ast.Call) else None
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "super"
        ):
            uses += [
                Use(join_key(b, func.attr), "super", _where(f, node), node)
                for b in bases
            ]
    return uses


def adapter_uses(adapter_dir: Path = ADAPTER_DIR) -> list[Use]:
    """Every use of a vLLM key in the adapter's source, plus ``EXPLICIT``.

    Raises:
        ValueError: a class named in ``PROTOCOLS`` no longer exists.
    """
    files = _load_adapter(adapter_dir)
    classes = _classes(files)
    missing = sorted(set(PROTOCOLS) - set(classes))
    if missing:
        raise ValueError(f"PROTOCOLS names classes that do not exist: {missing}")
    uses = [Use(k, "explicit", "EXPLICIT") for k in EXPLICIT]
    for f in files:
        uses += [Use(k, "import", f.rel) for _, k in f.vllm_imports]
        uses += _chain_uses(f.tree, f.roots, f)
        for fn in _functions(f.tree):
            roots: dict[str, list[str]] = {}
            _local_roots(fn, f, roots)
            uses += _chain_uses(fn, roots, f)
    for qual in sorted(classes):
        uses += _subclass_uses(qual, classes)
    return uses


def split_key(key: str) -> tuple[str, list[str]]:
    """``"m.n:A.b().c"`` -> ("m.n", ["A", "b", "()", "c"]); a module key has []."""
    module, _, rest = key.partition(":")
    segments = []
    for m in _SEGMENT.finditer(rest):
        name = m.group(0).removesuffix("()")
        segments += [name] if name else []
        segments += ["()"] if m.group(0).endswith("()") else []
    return module, segments


def parent_key(key: str) -> str | None:
    """The key one segment up (None for ``module:Name`` and module keys)."""
    if key.endswith("()"):
        return key[:-2]
    if len(split_key(key)[1]) <= 1:
        return None
    return key[: key.rindex(".")]


def is_expandable(entry: dict) -> bool:
    """Whether attributes of this entry are looked up (a module, class or typed)."""
    return entry["kind"] in ("module", "class") or "type" in entry


def with_ancestors(keys: set[str]) -> set[str]:
    """The keys and every key up their chains (``m:A.b.c`` adds ``m:A.b``, ``m:A``)."""
    out = set()
    for key in keys:
        while key is not None and key not in out:
            out.add(key)
            key = parent_key(key)
    return out


def expected_keys(candidates: set[str], entries: dict[str, dict]) -> set[str]:
    """The keys a snapshot records: the candidates and their ancestors, down to
    the first entry that is not expandable (absent, or of an unknown type)."""

    def ok(key: str) -> bool:
        parent = parent_key(key)
        if parent is None:
            return True
        return parent in entries and is_expandable(entries[parent]) and ok(parent)

    return {k for k in with_ancestors(candidates) if ok(k)}


# -- the vLLM side: what each key is, read from source ------------------------


class Source:
    """vLLM's Python source from a directory or a wheel, parsed on demand."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path) if path.suffix == ".whl" else None
        if self._zip is None and (path / "vllm" / "__init__.py").exists():
            path = path / "vllm"
        if self._zip is None and not (path / "__init__.py").exists():
            raise ValueError(f"{path} is neither a wheel nor a vllm source tree")
        self._dir = path.parent if self._zip is None else None
        self._trees: dict[str, ast.Module | None] = {}

    def _read(self, rel: str) -> str | None:
        if self._zip is not None:
            try:
                return self._zip.read(rel).decode()
            except KeyError:
                return None
        path = self._dir / rel
        return path.read_text() if path.is_file() else None

    def _module_text(self, module: str) -> str | None:
        rel = module.replace(".", "/")
        text = self._read(f"{rel}.py")
        return self._read(f"{rel}/__init__.py") if text is None else text

    def is_package(self, module: str) -> bool:
        rel = module.replace(".", "/")
        return self._read(f"{rel}/__init__.py") is not None

    def tree(self, module: str) -> ast.Module | None:
        """The module's AST, or None when the module does not exist."""
        if module not in self._trees:
            text = self._module_text(module)
            self._trees[module] = None if text is None else ast.parse(text, module)
        return self._trees[module]

    def version(self) -> str:
        for stmt in (self.tree("vllm._version") or ast.Module([], [])).body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
                names = {t.id for t in stmt.targets if isinstance(t, ast.Name)}
                if "__version__" in names:
                    return stmt.value.value
        raise ValueError("vllm/_version.py has no __version__")


@dataclass(frozen=True)
class Ref:
    """What a name resolves to: ``kind``, where, the defining node, its class."""

    kind: str  # module, class, function, attribute, absent, external
    where: str
    node: ast.AST | None = None
    module: str = ""
    owner: Ref | None = None  # the class of a method or attribute
    stores: tuple = ()  # instance attribute: (node, enclosing function) pairs


ABSENT = Ref("absent", "")


def _top_level(body: list[ast.stmt]):
    """Module-level statements, looking into if/try/with blocks."""
    for stmt in body:
        if isinstance(stmt, ast.If | ast.With):
            yield from _top_level(stmt.body + getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            handlers = [s for h in stmt.handlers for s in h.body]
            yield from _top_level(stmt.body + handlers + stmt.orelse + stmt.finalbody)
        else:
            yield stmt


def _targets(stmt: ast.stmt) -> list[ast.expr]:
    if isinstance(stmt, ast.Assign):
        out = []
        for t in stmt.targets:
            out += t.elts if isinstance(t, ast.Tuple) else [t]
        return out
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        return [stmt.target]
    return []


_MEMBERLESS_BASES = {"ABC", "Generic", "Protocol", "object"}


def _unsubscript(node: ast.AST) -> ast.AST:
    return node.value if isinstance(node, ast.Subscript) else node


def _is_vllm(module: str) -> bool:
    return module == "vllm" or module.startswith("vllm.")


def _parse_annotation(node: ast.AST) -> ast.AST | None:
    """A string annotation (``"KVCacheManager"``) parsed; others as they are."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    return node


def _is_property(node: ast.AST | None) -> bool:
    names = {ast.unparse(d) for d in getattr(node, "decorator_list", [])}
    return bool(names & {"property", "cached_property", "functools.cached_property"})


class Resolver:
    """Resolves keys in one vLLM source, following imports like Python does."""

    def __init__(self, source: Source) -> None:
        self.src = source

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        parts = module.split(".")
        base = parts if self.src.is_package(module) else parts[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def module(self, module: str) -> Ref:
        if not _is_vllm(module):
            return Ref("external", module)
        return Ref("module", module, module=module) if self.src.tree(module) else ABSENT

    def name(self, module: str, name: str, depth: int = 0) -> Ref:
        """``from module import name``: a definition, an import followed, or a
        submodule; ``external`` outside vLLM, ``absent`` when not there."""
        if not _is_vllm(module):
            return Ref("external", f"{module}:{name}")
        tree = self.src.tree(module)
        if tree is None or depth > 20:
            return ABSENT
        found = self._binding(module, tree, name, depth)
        if found is not None:
            return found
        sub = f"{module}.{name}"
        return Ref("module", sub, module=sub) if self.src.tree(sub) else ABSENT

    def _binding(self, module: str, tree: ast.Module, name: str, depth: int):
        assigned, stars = None, []
        for stmt in _top_level(tree.body):
            if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if stmt.name == name:
                    kind = "class" if isinstance(stmt, ast.ClassDef) else "function"
                    return Ref(kind, f"{module}:{name}", stmt, module)
            elif isinstance(stmt, ast.ImportFrom):
                src = self._absolute(module, stmt)
                for a in stmt.names:
                    if a.name == "*":
                        stars.append(src)
                    elif (a.asname or a.name) == name:
                        return self.name(src, a.name, depth + 1)
            elif isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if (a.asname or a.name.split(".")[0]) == name:
                        return self.module(a.name if a.asname else name)
            elif assigned is None and any(
                isinstance(t, ast.Name) and t.id == name for t in _targets(stmt)
            ):
                assigned = Ref("attribute", f"{module}:{name}", stmt, module)
        for star in stars:
            found = self.name(star, name, depth + 1)
            if found.kind != "absent":
                return found
        return assigned

    def expr(self, node: ast.AST, module: str, depth: int = 0) -> Ref:
        """A name or dotted name as seen from ``module``."""
        found = _chain(node)
        if found is None:
            return ABSENT
        ref = self.name(module, found[0])
        for attr in found[1]:
            ref = self.member(ref, attr, depth)
        return ref

    def member(self, ref: Ref, name: str, depth: int = 0) -> Ref:
        """Attribute ``name`` of a module, a class or a value of known type."""
        if ref.kind == "module":
            return self.name(ref.module, name)
        cls = self.type_of(ref, depth + 1)
        return ABSENT if cls is None else self.class_member(cls, name)

    def class_member(self, cls: Ref, name: str, seen: set | None = None) -> Ref:
        """``name`` in the class body, in ``self.name = ...`` stores, or a base's."""
        seen = set() if seen is None else seen
        if cls.where in seen:
            return ABSENT
        seen.add(cls.where)
        where = f"{cls.where}.{name}"
        for stmt in cls.node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                if stmt.name == name:
                    return Ref("method", where, stmt, cls.module, cls)
            elif any(isinstance(t, ast.Name) and t.id == name for t in _targets(stmt)):
                return Ref("attribute", where, stmt, cls.module, cls)
        stores = self._instance_stores(cls, name)
        if stores:
            return Ref("attribute", where, None, cls.module, cls, tuple(stores))
        for base in self.bases(cls):
            found = self.class_member(base, name, seen)
            if found.kind != "absent":
                return found
        if self.external_bases(cls):
            return Ref("external", where)  # maybe inherited from outside vLLM
        return ABSENT

    def _instance_stores(self, cls: Ref, name: str) -> list:
        stores = []
        for fn in cls.node.body:
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for stmt in ast.walk(fn):
                    if any(_chain(t) == ("self", [name]) for t in _targets(stmt)):
                        stores.append((stmt, fn))
        return stores

    def bases(self, cls: Ref) -> list[Ref]:
        """The vLLM classes among a class's bases (``Generic[T]`` unwrapped)."""
        refs = [self.expr(_unsubscript(b), cls.module) for b in cls.node.bases]
        return [ref for ref in refs if ref.kind == "class"]

    def external_bases(self, cls: Ref) -> list[str]:
        """Bases from outside vLLM that may add members (not ABC, Protocol...)."""
        out = []
        for base in map(_unsubscript, cls.node.bases):
            text = ast.unparse(base)
            memberless = text.split(".")[-1] in _MEMBERLESS_BASES
            if not memberless and self.expr(base, cls.module).kind != "class":
                out.append(text)
        return out

    def type_of(self, ref: Ref, depth: int = 0) -> Ref | None:
        """The vLLM class of a value: a class itself, an instance, a property's
        return annotation, an attribute's annotation or constructor call."""
        if depth > 8:
            return None
        if ref.kind == "class":
            return ref
        if ref.kind == "instance":
            return ref.owner
        if ref.kind == "method" and _is_property(ref.node):
            return self.returns(ref)
        if ref.kind != "attribute":
            return None
        pairs = list(ref.stores) or [(ref.node, None)]
        for stmt, _ in pairs:
            if isinstance(stmt, ast.AnnAssign):
                found = self._annotation(stmt.annotation, ref.module, depth)
                if found is not None:
                    return found
        for stmt, fn in pairs:
            if isinstance(stmt, ast.Assign):
                found = self._value_type(stmt.value, ref, fn, depth)
                if found is not None:
                    return found
        return None

    def returns(self, ref: Ref, depth: int = 0) -> Ref | None:
        """The vLLM class a function's return annotation names, if any."""
        node = getattr(ref.node, "returns", None)
        return self._annotation(node, ref.module, depth)

    def _annotation(self, node: ast.AST | None, module: str, depth: int) -> Ref | None:
        node = None if node is None else _parse_annotation(node)
        if node is None:
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left = self._annotation(node.left, module, depth)
            return left or self._annotation(node.right, module, depth)
        if isinstance(node, ast.Subscript):
            outer = _chain(node.value)
            if outer and (outer[1] or [outer[0]])[-1] == "Optional":
                return self._annotation(node.slice, module, depth)
            return None
        ref = self.expr(node, module, depth + 1)
        return ref if ref.kind == "class" else None

    def _value_type(self, value: ast.AST, ref: Ref, fn, depth: int) -> Ref | None:
        if isinstance(value, ast.Call):
            callee = self._in_scope(value.func, ref, depth)
            if callee.kind == "class":
                return callee
            return self.returns(callee, depth)
        if isinstance(value, ast.Name) and fn is not None:
            for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
                if a.arg == value.id:
                    return self._annotation(a.annotation, ref.module, depth)
        found = self._in_scope(value, ref, depth)
        return None if found.kind == "absent" else self.type_of(found, depth + 1)

    def _in_scope(self, node: ast.AST, ref: Ref, depth: int) -> Ref:
        """A name or ``self.`` chain as seen from inside ``ref``'s class."""
        found = _chain(node)
        if found is None:
            return ABSENT
        root, attrs = found
        use_self = root == "self" and ref.owner is not None
        cur = ref.owner if use_self else self.name(ref.module, root)
        for attr in attrs:
            cur = self.member(cur, attr, depth + 1)
        return cur

    def key(self, key: str) -> Ref:
        """Resolve ``module:Name.attr().attr`` segment by segment."""
        module, segments = split_key(key)
        if not segments:
            return self.module(module)
        ref = self.name(module, segments[0])
        for seg in segments[1:]:
            ref = self._call(ref) if seg == "()" else self.member(ref, seg)
        return ref

    def _call(self, ref: Ref) -> Ref:
        """What calling ``ref`` gives: an instance of a class, a function's result."""
        if ref.kind == "absent":
            return ABSENT
        cls = ref if ref.kind == "class" else self.returns(ref)
        if cls is None:
            return Ref("value", ref.where + "()")
        return Ref("instance", ref.where + "()", owner=cls)


# -- entries ------------------------------------------------------------------


def params_of(args: ast.arguments) -> list[str]:
    """Parameters as Python writes them: ``["self", "n=1", "*", "k", "**kw"]``."""
    out = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for i, (a, d) in enumerate(zip(positional, defaults, strict=True)):
        out.append(a.arg if d is None else f"{a.arg}={ast.unparse(d)}")
        if args.posonlyargs and i == len(args.posonlyargs) - 1:
            out.append("/")
    if args.vararg:
        out.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        out.append("*")
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(a.arg if d is None else f"{a.arg}={ast.unparse(d)}")
    if args.kwarg:
        out.append(f"**{args.kwarg.arg}")
    return out


def _fields(resolver: Resolver, cls: Ref, seen: set) -> list[str]:
    """Dataclass / NamedTuple fields, the bases' first (``ClassVar`` left out)."""
    if cls.where in seen:
        return []
    seen.add(cls.where)
    out = []
    for base in resolver.bases(cls):
        out += _fields(resolver, base, seen)
    for stmt in cls.node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            name = stmt.target.id
            out = [f for f in out if f.split("=")[0] != name]
            default = "" if stmt.value is None else f"={ast.unparse(stmt.value)}"
            out.append(name + default)
    return out


def _is_record(resolver: Resolver, cls: Ref) -> bool:
    decorators = " ".join(ast.unparse(d) for d in cls.node.decorator_list)
    bases = " ".join(ast.unparse(b) for b in cls.node.bases)
    if "dataclass" in decorators or "NamedTuple" in bases:
        return True
    return any(_is_record(resolver, b) for b in resolver.bases(cls))


def _class_entry(resolver: Resolver, cls: Ref, with_init: bool) -> dict:
    """Bases, decorators and, for a class we construct or subclass, ``init``."""
    entry = {
        "bases": [ast.unparse(_unsubscript(b)) for b in cls.node.bases],
        "decorators": [ast.unparse(d) for d in cls.node.decorator_list],
    }
    if not with_init:
        return entry
    init = resolver.class_member(cls, "__init__")
    if init.kind == "method":
        entry.update(init=params_of(init.node.args)[1:], init_from=init.owner.where)
    elif _is_record(resolver, cls):
        entry.update(init=_fields(resolver, cls, set()), init_from="fields")
    elif init.kind == "absent":
        entry.update(init=[], init_from="object")
    return entry


def entry_for(resolver: Resolver, ref: Ref, with_init: bool = False) -> dict:
    """The JSON entry of a resolved key (``with_init``: a class's constructor)."""
    if ref.kind in ("absent", "external", "value"):
        return {"kind": ref.kind}
    if ref.kind == "instance":
        return {"kind": "instance", "type": ref.owner.where}
    entry = {"kind": ref.kind, "defined_in": ref.where}
    node = ref.node
    if ref.kind == "class":
        entry.update(_class_entry(resolver, ref, with_init))
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        decorators = [ast.unparse(d) for d in node.decorator_list]
        if "property" in decorators or "cached_property" in decorators:
            entry["kind"] = "property"
        entry.update(params=params_of(node.args), decorators=decorators)
        if isinstance(node, ast.AsyncFunctionDef):
            entry["async"] = True
    elif ref.kind == "attribute":
        stmt = next((s for s, _ in ref.stores if isinstance(s, ast.AnnAssign)), node)
        if isinstance(stmt, ast.AnnAssign):
            entry["annotation"] = ast.unparse(stmt.annotation)
    typ = resolver.type_of(ref)
    if typ is not None and ref.kind not in ("class", "module"):
        entry["type"] = typ.where
    return entry


def snapshot(source_path: Path, adapter_dir: Path = ADAPTER_DIR) -> dict:
    """The API-surface snapshot of one vLLM source for the adapter's uses."""
    source = Source(source_path)
    resolver = Resolver(source)
    uses = adapter_uses(adapter_dir)
    candidates = {u.key for u in uses}
    built = {u.key for u in uses if u.how in ("call", "self_call", "base")}
    entries = {
        key: entry_for(resolver, resolver.key(key), key in built)
        for key in with_ancestors(candidates)
    }
    keep = expected_keys(candidates, entries)
    return {
        "generator": GENERATOR,
        "vllm_version": source.version(),
        "symbols": {k: entries[k] for k in sorted(keep)},
    }


def dumps(snap: dict) -> str:
    """Deterministic JSON: sorted keys, one symbol a line."""
    head = [f"  {json.dumps(k)}: {json.dumps(snap[k])}," for k in HEADER]
    body = ",\n".join(
        f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
        for k, v in sorted(snap["symbols"].items())
    )
    return "\n".join(["{", *head, '  "symbols": {', body, "  }", "}"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="vLLM source tree or wheel")
    parser.add_argument("-o", "--output", type=Path, help="default: stdout")
    args = parser.parse_args(argv)
    text = dumps(snapshot(args.path))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
