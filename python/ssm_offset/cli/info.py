"""`ssm-offset info`: what this installation has (versions, devices, kernels, Rust core)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def collect() -> dict:
    import torch

    import ssm_offset

    report = {
        "ssm_offset": ssm_offset.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
    }
    try:
        from ssm_offset import _core

        from ssm_offset.native import built_digest, source_digest

        report["rust_core"] = f"{_core.__version__} (sources {built_digest()[:16]})"
        crate = Path(ssm_offset.__file__).resolve().parents[2] / "rust"
        if (crate / "build.rs").is_file():  # a checkout: say whether the build is current
            report["rust_core"] += " = this checkout" if source_digest(crate) == built_digest() else \
                f" != this checkout's rust/ ({source_digest(crate)[:16]}): rebuild"
    except ImportError as exc:  # the package was imported from source without building the crate
        report["rust_core"] = f"unavailable ({exc})"
    from ssm_offset.ops import kernels

    report["scan_kernels"] = kernels.status()
    return report


def run(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, devices, and which scan implementation is in use")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)
