"""`ssm-offset build-kernels`: build the CUDA scan kernels ahead of time into the kernel cache."""
from __future__ import annotations

import time


def run(args) -> int:
    from ssm_offset.ops import kernels

    start = time.perf_counter()
    try:
        ext = kernels.build(verbose=args.verbose)
    except RuntimeError as exc:
        print(f"ssm-offset build-kernels: {exc}")
        return 1
    print(f"built {ext.__name__} in {time.perf_counter() - start:.1f} s (cache: {kernels.cache_dir()})")
    print(kernels.status())
    return 0


def register(sub) -> None:
    p = sub.add_parser("build-kernels", help="build the CUDA scan kernels now (otherwise built on first use)")
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    p.set_defaults(func=run)
