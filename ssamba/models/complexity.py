"""Inference complexity of an encoder + classifier: parameter bytes and multiply-accumulates.

DCASE2025 Task 1 limits every submitted model to 128 kB of parameters and 30 M MACs for one
second of audio. Hook-based counters (torchinfo) see only ``nn.Linear``/``nn.Conv`` modules and
miss the selective scan entirely, so this module counts analytically, per token and layer:

* projections: ``in_proj`` (D x 2E), ``x_proj`` (E x (R + 2N)) and ``dt_proj`` (R x E) per branch
  or scan, ``out_proj`` (E x D); the patch embedding (fshape x tshape x D per patch); the head;
* the depthwise causal convolution: E x d_conv per branch;
* the selective scan, per scan, channel and state: exp(delta A) argument, delta B u, the state
  update h = dA h + dBu and the read-out C h: 4 MACs; per scan and channel: delta u, D u and the
  SiLU gate: 3 MACs; (exp, softplus and SiLU themselves are counted apart as ``nonlinear``);
* norms (LayerNorm/RMSNorm: 2 per value), the direction merge and the pooling (1 per value).

The projection and patch-embedding counts equal what ``torch.utils.flop_counter`` measures on the
real model (a test checks it); the scan/conv/norm terms are what that counter cannot see.

examples:
  python -m ssamba.models.complexity --preset ssamba-tiny --seconds 1 --classes 10
  python -m ssamba.models.complexity --preset ssamba-tiny --seconds 1 --classes 10 --search
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import asdict, dataclass, replace

from ssamba.models.encoder import EncoderConfig, grid_size, preset_config

DCASE_MAX_MACS = 30_000_000
DCASE_MAX_PARAM_BYTES = 128_000
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}
FRAMES_PER_SECOND = 100  # 10 ms hop


@dataclass(frozen=True)
class Complexity:
    """MACs for one input (by part) and the parameter count."""

    tokens: int
    patch_embed: int
    projections: int
    conv: int
    scan: int
    norms_and_merges: int
    head: int
    nonlinear: int
    """exp / softplus / SiLU evaluations (not MACs; reported for completeness)."""
    parameters: int

    @property
    def macs(self) -> int:
        return self.patch_embed + self.projections + self.conv + self.scan + self.norms_and_merges + self.head

    def parameter_bytes(self, dtype: str = "fp16") -> int:
        return self.parameters * BYTES_PER_PARAM[dtype]

    def fits_dcase(self, dtype: str = "fp16") -> bool:
        return self.macs <= DCASE_MAX_MACS and self.parameter_bytes(dtype) <= DCASE_MAX_PARAM_BYTES


def count_parameters(config: EncoderConfig, classes: int, head: str = "ssamba") -> int:
    """Parameters of the encoder (built for real) plus the classification head."""
    from ssamba.models.encoder import AudioMambaEncoder

    encoder = sum(p.numel() for p in AudioMambaEncoder(config).parameters())
    dim = config.embed_dim
    head_params = dim * classes + classes + (2 * dim if head == "ssamba" else 0)
    return encoder + head_params


def complexity(config: EncoderConfig, classes: int, head: str = "ssamba") -> Complexity:
    """Analytic MACs of one forward pass over a ``config.num_mel_bins x config.target_length`` input."""
    f, t = grid_size(config.num_mel_bins, config.target_length, config.fshape, config.tshape, config.fstride, config.tstride)
    patches = f * t
    tokens = patches + (0 if config.cls_position == "none" else 1)
    dim, depth, n = config.embed_dim, config.depth, config.d_state
    inner = config.expand * dim
    rank = config.dt_rank if config.dt_rank is not None else math.ceil(dim / 16)
    scans = 1 if config.bimamba == "none" else 2
    branches = 2 if config.bimamba == "v2" else 1  # v1 shares conv and x_proj between its two scans
    per_token_layer = {
        "projections": dim * 2 * inner + branches * inner * (rank + 2 * n) + scans * rank * inner + inner * dim,
        "conv": branches * inner * config.d_conv,
        "scan": scans * (4 * inner * n + 3 * inner),
        "norms_and_merges": 2 * dim + (inner if scans == 2 else 0),
        "nonlinear": scans * (inner * n + 2 * inner) + branches * inner,  # exp(dA), softplus, SiLU(z); SiLU(conv)
    }
    final_norms = (2 if config.double_final_norm else 1) * 2 * dim * tokens
    pooling = dim * patches
    head_macs = dim * classes + (2 * dim if head == "ssamba" else 0)
    layer = {k: v * tokens * depth for k, v in per_token_layer.items()}
    return Complexity(
        tokens=tokens,
        patch_embed=patches * config.fshape * config.tshape * dim,
        projections=layer["projections"],
        conv=layer["conv"],
        scan=layer["scan"],
        norms_and_merges=layer["norms_and_merges"] + final_norms + pooling,
        head=head_macs,
        nonlinear=layer["nonlinear"],
        parameters=count_parameters(config, classes, head),
    )


def dcase_input(config: EncoderConfig, seconds: float = 1.0) -> EncoderConfig:
    """``config`` for ``seconds`` of audio (10 ms frames)."""
    return replace(config, target_length=int(round(seconds * FRAMES_PER_SECOND)))


def search(classes: int, seconds: float, dtype: str) -> list[tuple[EncoderConfig, Complexity]]:
    """SSAMBA-style configs (bidirectional v2, 16x16 patches) within the DCASE limits, largest first."""
    found = []
    for dim, depth, d_state, expand, tstride in itertools.product((16, 24, 32, 48, 64), (2, 4, 6, 8), (4, 8, 16), (1, 2), (16, 8)):
        config = dcase_input(preset_config("ssamba-tiny", embed_dim=dim, depth=depth, d_state=d_state, expand=expand,
                                           fstride=16, tstride=tstride), seconds)
        result = complexity(config, classes)
        if result.fits_dcase(dtype):
            found.append((config, result))
    return sorted(found, key=lambda item: (-item[1].parameters, item[1].macs))


def report(name: str, config: EncoderConfig, result: Complexity, dtype: str) -> str:
    lines = [f"{name}: width {config.embed_dim}, depth {config.depth}, d_state {config.d_state}, expand {config.expand}, "
             f"patch {config.fshape}x{config.tshape} stride {config.fstride}x{config.tstride}, "
             f"input {config.num_mel_bins}x{config.target_length}, {result.tokens} tokens"]
    for part in ("patch_embed", "projections", "conv", "scan", "norms_and_merges", "head"):
        lines.append(f"  {part:<17} {getattr(result, part):>14,} MACs")
    verdict = lambda ok: "fits" if ok else "EXCEEDS"  # noqa: E731
    lines.append(f"  {'total':<17} {result.macs:>14,} MACs   (limit {DCASE_MAX_MACS:,}: {verdict(result.macs <= DCASE_MAX_MACS)}, "
                 f"x{result.macs / DCASE_MAX_MACS:.2f})")
    lines.append(f"  {'nonlinear':<17} {result.nonlinear:>14,} exp/softplus/SiLU evaluations (not MACs)")
    size = result.parameter_bytes(dtype)
    lines.append(f"  {'parameters':<17} {result.parameters:>14,} = {size:,} bytes in {dtype} (limit {DCASE_MAX_PARAM_BYTES:,}: "
                 f"{verdict(size <= DCASE_MAX_PARAM_BYTES)}, x{size / DCASE_MAX_PARAM_BYTES:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssamba.models.complexity", description=__doc__.split("\n", 1)[0],
                                     epilog=__doc__.split("examples:", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ssamba-tiny", help="encoder preset (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.0, help="input length in seconds (default 1, DCASE's unit)")
    parser.add_argument("--classes", type=int, default=10, help="classes of the head (default 10 scenes)")
    parser.add_argument("--fstride", type=int, default=16)
    parser.add_argument("--tstride", type=int, default=16)
    parser.add_argument("--dtype", choices=sorted(BYTES_PER_PARAM), default="fp16", help="parameter storage (default fp16)")
    parser.add_argument("--search", action="store_true", help="also list the SSAMBA-style configs that fit the DCASE limits")
    args = parser.parse_args(argv)
    config = dcase_input(preset_config(args.preset, fstride=args.fstride, tstride=args.tstride), args.seconds)
    print(report(args.preset, config, complexity(config, args.classes), args.dtype))
    if args.search:
        fitting = search(args.classes, args.seconds, args.dtype)
        print(f"\n{len(fitting)} SSAMBA-style configs fit 128 kB ({args.dtype}) and 30 M MACs per {args.seconds:g} s; the largest:")
        for config, result in fitting[:5]:
            print(report("  candidate", config, result, args.dtype))
        if fitting:
            print("\nfor the config: " + ", ".join(f"{k}={v}" for k, v in asdict(fitting[0][0]).items()
                                                 if k in ("embed_dim", "depth", "d_state", "expand", "fstride", "tstride")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
