"""The environment recorded with every benchmark result, and how it is summarised for a reader.

The CPU description, the peak FLOP/s formula and the runtime versions come from ``runner.py``
(the same code runs on remote hosts, so local and remote results describe machines alike); this
module adds what only the local side knows (edgederm's version and commit) and the text forms the
report shows.
"""

from __future__ import annotations

from typing import Any

from .runner import cpu_description, cpu_from_parts, fp32_flop_per_cycle, host_description, peak_gflops, runtime_versions

__all__ = [
    "cpu_description",
    "cpu_from_parts",
    "fp32_flop_per_cycle",
    "isa_summary",
    "local_environment",
    "peak_gflops",
    "runtime_versions",
]

# flag → (family, feature) for the one-line summary
_FAMILIES: list[tuple[str, str, str]] = [
    ("amx_tile", "AMX", "tiles"), ("amx_bf16", "AMX", "BF16"), ("amx_int8", "AMX", "INT8"),
    ("avx512f", "AVX-512", "F"), ("avx512bw", "AVX-512", "BW"), ("avx512vl", "AVX-512", "VL"),
    ("avx512_vnni", "AVX-512", "VNNI"), ("avx512_bf16", "AVX-512", "BF16"), ("avx512_fp16", "AVX-512", "FP16"),
    ("avx2", "AVX2", ""), ("fma", "FMA", ""), ("avx_vnni", "AVX-VNNI", ""), ("avx", "AVX", ""), ("sse4_2", "SSE4.2", ""),
    ("asimd", "NEON", ""), ("asimdhp", "NEON", "FP16"), ("asimddp", "NEON", "dot-product"), ("i8mm", "I8MM", ""),
    ("bf16", "BF16", ""), ("sve", "SVE", ""), ("sve2", "SVE2", ""), ("sme", "SME", ""),
]


def isa_summary(isa: list[str] | None) -> str:
    """``['avx2', 'fma', 'avx512f', 'avx512_vnni', 'amx_int8']`` → ``'AVX-512 (F, VNNI), AMX (INT8), AVX2, FMA'``."""
    have = set(isa or [])
    order: list[str] = []
    feats: dict[str, list[str]] = {}
    for flag, family, feat in _FAMILIES:
        if flag not in have:
            continue
        if family not in feats:
            order.append(family)
            feats[family] = []
        if feat:
            feats[family].append(feat)
    # Older families are implied by newer ones; keep the summary to what matters for inference.
    if "AVX2" in feats:
        for implied in ("AVX", "SSE4.2"):
            if implied in feats:
                order.remove(implied)
    parts = [f"{fam} ({', '.join(feats[fam])})" if feats[fam] else fam for fam in order]
    return ", ".join(parts) or "none detected"


def local_environment(threads: int | None, *, fma_units: int = 2) -> dict[str, Any]:
    """This host (as the runner describes hosts) plus edgederm's version and commit."""
    from .. import __version__
    from ..card import git_sha

    env = host_description(threads, fma_units)
    env["edgederm"] = __version__
    env["git_sha"] = git_sha()
    return env
