"""A small workload that runs every CUDA kernel of the extension once per dtype, for
`compute-sanitizer --tool memcheck|racecheck` (benchmarks/gpu_suite.sh runs it). Sizes are ragged
and views misaligned so the vectorised and the scalar paths and the packed-code tails all run.
"""

import torch

import sugar_kernels as sk


def main() -> None:
    assert sk.build_info()["cuda_compiled"] and torch.cuda.is_available()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n in (7, 65_537):
            base = torch.randn(n + 1, device="cuda", dtype=dtype)
            for x in (base[:n], base[1:]):  # aligned and misaligned
                for surrogate in ("bsilu", "gelu"):
                    xr = x.detach().clone().requires_grad_()
                    sk.sugar_relu(xr, surrogate, backend="cuda").sum().backward()
                for bits in (8, 1):
                    xr = x.detach().clone().requires_grad_()
                    y = sk.sugar_relu(xr * 1, bits=bits, inplace=True, backend="cuda")
                    y.sum().backward()
    torch.cuda.synchronize()
    print("sanitize workload done")


if __name__ == "__main__":
    main()
