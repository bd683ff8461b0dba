"""Compile the paged-attention kernel for a GPU target without one; report resources.

Triton compiles for any ``GPUTarget`` on the CPU (ptxas ships in its wheel), but the
register and spill counts it reports on ``CompiledKernel`` (``n_regs``, ``n_spills``)
are filled in only when a cubin is loaded on a device. So the report reads them from
the cubin with ``cuobjdump -res-usage`` (also in the wheel): ``REG`` registers per
thread, and ``STACK`` + ``LOCAL`` bytes of local memory per thread, which for this
kernel (no local arrays in its PTX) is all register spill; the driver reports the
same bytes, divided by 4, as Triton's ``n_spills``. Shared memory is the compiled
kernel's ``metadata.shared``, the dynamic shared memory a launch requests.

The kernel, its arguments and their specialisation are the runtime's own: the
arguments come from ``kernel_arguments`` and are bound by the JIT function's own
binder, as ``JITFunction.run`` does before it compiles.

    python -m maskkv_vllm.kv_cache.triton_compile_check [--head-dim 128]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from maskkv_vllm.kv_cache import triton_paged_attention as tpa

TARGETS = [(8, 0), (8, 9), (9, 0)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def example_inputs(dtype: torch.dtype, head_dim: int) -> tuple[torch.Tensor, ...]:
    """CPU stand-ins shaped like one LLaDA-8B layer (32 heads, no GQA), canvas 256.

    Only dtypes, strides, alignment and the int arguments' divisibility by 16
    reach the compiler, so the contents are left uninitialised.
    """
    b, heads, canvas, page, pages = 1, 32, 256, 16, 64
    q = torch.empty(b, heads, canvas, head_dim, dtype=dtype)
    k, v = torch.empty_like(q), torch.empty_like(q)
    canvas_mask = torch.ones(b, canvas, dtype=torch.bool)
    k_cache = torch.empty(pages, page, head_dim, dtype=dtype)
    v_cache = torch.empty_like(k_cache)
    block_tables = torch.zeros(b, heads, pages, dtype=torch.int32)
    seq_lens = torch.zeros(b, heads, dtype=torch.int32)
    return q, k, v, canvas_mask, k_cache, v_cache, block_tables, seq_lens


def compile_for_target(
    capability: tuple[int, int], args: tuple, meta: dict
) -> triton.compiler.CompiledKernel:
    """Compile ``_paged_attention_kernel`` for ``capability`` as a launch would."""
    kernel = tpa._paged_attention_kernel
    if not isinstance(kernel, JITFunction):
        raise RuntimeError("TRITON_INTERPRET=1 is set: there is no kernel to compile")
    target = GPUTarget("cuda", 10 * capability[0] + capability[1], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **meta)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, meta, bound, specialization, options
    )
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the cubin's one kernel, per cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        cuobjdump = triton.knobs.nvidia.cuobjdump.path
        text = subprocess.run(
            [cuobjdump, "-res-usage", f.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{text}")
    return dict(
        zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, found.groups()), strict=True)
    )


def compile_report(
    dtype: torch.dtype,
    capability: tuple[int, int],
    head_dim: int,
    config: tpa.LaunchConfig | None = None,
) -> dict:
    """Registers, spills and shared memory of the kernel compiled for a target.

    Args:
        dtype: element type of q, k, v and the pages.
        capability: (major, minor) of the target, e.g. (9, 0) for H100.
        head_dim: d of the inputs.
        config: launch config to compile; default ``launch_config``'s choice.

    Returns:
        target, dtype, head_dim, the config's fields, ``n_regs`` (per thread),
        ``spill_bytes`` (local memory per thread), ``shared`` and ``max_shared``
        (bytes per block).
    """
    config = config or tpa.launch_config(dtype, capability, head_dim)
    inputs = example_inputs(dtype, head_dim)
    out = torch.empty_like(inputs[0])
    _, args, meta = tpa.kernel_arguments(inputs, out, config)
    compiled = compile_for_target(capability, args, meta)
    usage = resource_usage(compiled.asm["cubin"])
    return {
        "target": f"sm_{capability[0]}{capability[1]}",
        "dtype": str(dtype).removeprefix("torch."),
        "head_dim": head_dim,
        **vars(config),
        "n_regs": usage["REG"],
        "spill_bytes": usage["STACK"] + usage["LOCAL"],
        "shared": compiled.metadata.shared,
        "max_shared": tpa.MAX_SHARED_PER_BLOCK[capability],
    }


def format_report(row: dict) -> str:
    """One line: target, dtype, config, then registers, spills and shared memory."""
    fits = (
        "ok"
        if row["spill_bytes"] == 0 and row["shared"] <= row["max_shared"]
        else "BAD"
    )
    return (
        f"{row['target']} {row['dtype']:<8} d={row['head_dim']:<3} "
        f"BLOCK_M={row['block_m']} BLOCK_N={row['block_n']} "
        f"warps={row['num_warps']} stages={row['num_stages']}: "
        f"regs={row['n_regs']} spill={row['spill_bytes']} B "
        f"shared={row['shared']}/{row['max_shared']} B {fits}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    head_dim = parser.parse_args().head_dim
    for capability in TARGETS:
        for dtype in DTYPES:
            print(format_report(compile_report(dtype, capability, head_dim)))


if __name__ == "__main__":
    main()
