"""Show the ssamba version, torch build, device and which selective-scan backends are usable.

examples:
  ssamba info
  SSAMBA_SCAN=ref ssamba info      # see which backend an override selects
  ssamba info --device cuda        # which scan CUDA tensors get (cuda, else triton, else chunked) and why

Never compiles or waits: the fused kernels are reported as usable only when their cached build is
current (`ssamba build` makes it), and a build running elsewhere is named instead of waited for.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="device to report the scan choice for (default: cuda if available, else cpu)")


def main(args: argparse.Namespace) -> int:
    import torch

    import ssamba
    from ssamba.models.fused_scan import fused_kernel_isas, set_build_on_first_use
    from ssamba.models.scan import backend_status, explain_default_backend, resolve_backend

    set_build_on_first_use(False)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    print(f"ssamba        {ssamba.__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    print(f"torch         {torch.__version__} (threads: {torch.get_num_threads()})")
    print(f"cuda          {cuda}")
    print("scan backends:")
    for name, reason in backend_status().items():
        detail = "usable" if reason is None else "unavailable: " + reason
        if name == "fused" and reason is None:
            detail += f" (kernels for {fused_kernel_isas()[0]})"
        print(f"  {name:<10} {detail}")
    override = os.environ.get("SSAMBA_SCAN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback reason is listed above
        chosen = resolve_backend(None, device)
        why = f"from SSAMBA_SCAN={override}" if override else "automatic: " + explain_default_backend(device)[1]
    print(f"scan on {device.type:<5} {chosen} ({why})")
    return 0
