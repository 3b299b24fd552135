"""Malformed arguments to the code-mode ops, called directly (``torch.ops.sugar...``).

Every case must raise a clear error naming the argument, never crash or silently accept. On CPU
every case raises. On CUDA the sizes, dtypes and devices raise too; the table *values* (scan
length, bucket starts, interval codes) are not read on the host there (a device-to-host copy
and a synchronisation per call), the kernels clamp them instead: those cases must run without an
out-of-bounds access and leave the device usable (checked by the GPU suite, with
compute-sanitizer where available).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import DEVICES

import sugar_kernels as sk  # noqa: F401  (registers the ops)
from sugar_kernels import code_tables as codes

FORWARD_OPS = ["relu_forward_codes", "relu_forward_codes_"]


def _args(device, bits=8, dtype=torch.float32, n=37):
    """Valid (x, levels, thresholds, interval_codes, search, bits), fresh copies to corrupt."""
    dev = torch.device(device)
    levels, thresholds, interval_codes = codes.tables("bsilu", 1.67, "all", bits, dev, dtype)
    search = codes.search_table("bsilu", 1.67, "all", bits, dev, dtype)
    x = torch.linspace(-6, 6, n, dtype=dtype, device=dev)
    return [x, levels.clone(), thresholds.clone(), interval_codes.clone(), search.clone(), bits]


def _forward(op, args):
    return getattr(torch.ops.sugar, op)(*args)


# (name, corrupt(args) -> None, error type, message regex): raised on every device.
def _set(i, value):
    def corrupt(args):
        args[i] = value(args) if callable(value) else value

    return corrupt


SHAPE_CASES = [
    ("bits", _set(5, 3), ValueError, r"bits must be 1, 2, 4 or 8, got 3"),
    (
        "levels-count",
        _set(1, lambda a: a[1][:16]),
        RuntimeError,
        r"expected 2\*\*bits = 256 levels",
    ),
    ("levels-dtype", _set(1, lambda a: a[1].double()), TypeError, r"levels must be Float"),
    ("levels-2d", _set(1, lambda a: a[1].view(16, 16)), RuntimeError, r"levels must be a contig"),
    ("thresholds-dtype", _set(2, lambda a: a[2].half()), TypeError, r"thresholds must be Float"),
    (
        "thresholds-count",
        _set(2, lambda a: torch.linspace(-5, 5, 1024, device=a[0].device)),
        RuntimeError,
        r"at most 1023 thresholds, got 1024",
    ),
    ("codes-dtype", _set(3, lambda a: a[3].int()), TypeError, r"interval_codes must be Byte"),
    ("codes-count", _set(3, lambda a: a[3][:-1]), RuntimeError, r"len\(thresholds\) \+ 1 = \d+"),
    ("search-dtype", _set(4, lambda a: a[4].long()), TypeError, r"search must be Int"),
    ("search-size", _set(4, lambda a: a[4][:-1]), RuntimeError, r"search table of 4097 entries"),
    ("search-2d", _set(4, lambda a: a[4][:4096].view(64, 64)), RuntimeError, r"search must be a"),
    ("x-dtype", _set(0, lambda a: a[0].int()), TypeError, r"x must be float32, float64"),
]


def _value(i, index, value):
    def corrupt(args):
        args[i][index] = value

    return corrupt


# Corrupt values: errors on CPU; clamped by the CUDA kernels.
VALUE_CASES = [
    ("scan-huge", _value(4, 0, 100000), r"search\[0\] \(the scan length\) must be in \[0, 371\]"),
    ("scan-negative", _value(4, 0, -1), r"search\[0\] \(the scan length\) must be in \[0, 371\]"),
    ("bucket-above", _value(4, 7, 372), r"search\[7\] \(a bucket start\) must be in \[0, 371\]"),
    ("bucket-negative", _value(4, 4096, -5), r"search\[4096\] \(a bucket start\) .* got -5"),
    ("interval-code", _value(3, 3, 255), None),  # 8 bits: every byte is a valid code
    ("thresholds-nan", _value(2, 10, float("nan")), r"sorted and not NaN.*thresholds\[10\]"),
    ("thresholds-nan-first", _value(2, 0, float("nan")), r"sorted and not NaN.*thresholds\[0\]"),
    ("thresholds-nan-last", _value(2, -1, float("nan")), r"sorted and not NaN.*thresholds\[370\]"),
    ("thresholds-unsorted", _value(2, 10, 100.0), r"sorted and not NaN.*thresholds\[11\]"),
]


@pytest.mark.parametrize("op", FORWARD_OPS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_forward_shape_dtype_errors(case, device, op):
    _, corrupt, error, message = case
    args = _args(device)
    corrupt(args)
    x_before = args[0].clone()
    with pytest.raises(error, match=message):
        _forward(op, args)
    if args[0].is_floating_point():
        assert torch.equal(args[0], x_before)  # the in-place op wrote nothing


def _check_still_correct(device):
    """A valid call after a corrupt one: the device is usable and the codes are right."""
    x, levels, thresholds, interval_codes, search, bits = _args(device, n=1001)
    y, packed = torch.ops.sugar.relu_forward_codes(x, levels, thresholds, interval_codes, search, 8)
    assert torch.equal(y, torch.relu(x))
    assert torch.equal(packed, codes.encode_reference(x, thresholds, interval_codes, bits))


@pytest.mark.parametrize("op", FORWARD_OPS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_forward_value_errors(case, device, op):
    _, corrupt, message = case
    args = _args(device)
    corrupt(args)
    if message is None or device == "cuda":
        _forward(op, args)  # accepted (a valid 8-bit code) or clamped by the CUDA kernel
        if device == "cuda":
            torch.cuda.synchronize()
    else:
        with pytest.raises(RuntimeError, match=message):
            _forward(op, args)
    _check_still_correct(device)


@pytest.mark.parametrize("device", DEVICES)
def test_interval_code_too_wide(device):
    args = _args(device, bits=4)
    args[3][5] = 16  # not a 4-bit code
    if device == "cpu":
        with pytest.raises(RuntimeError, match=r"interval_codes\[5\] = 16 is not a 4-bit code"):
            _forward("relu_forward_codes", args)
        return
    # CUDA: masked to 4 bits in the kernel, so no neighbour's code is touched.
    x, _, thresholds, interval_codes, _, bits = args
    packed = _forward("relu_forward_codes", args)[1]
    expected = codes.encode_reference(x, thresholds, interval_codes & 15, bits)
    assert torch.equal(packed, expected)


def test_device_mismatch_cuda_tables_on_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU available")
    args = _args("cpu")
    args[0] = args[0].cuda()
    with pytest.raises(RuntimeError, match=r"levels is on cpu but x is on cuda"):
        _forward("relu_forward_codes", args)


BACKWARD_CASES = [
    ("bits", lambda g, c, lv: (g, c, lv, 5), ValueError, r"bits must be 1, 2, 4 or 8, got 5"),
    ("codes-short", lambda g, c, lv: (g, c[:-1], lv, 8), RuntimeError, r"codes hold 36 bytes"),
    ("codes-long", lambda g, c, lv: (g, torch.cat([c, c]), lv, 8), RuntimeError, r"codes hold"),
    ("codes-dtype", lambda g, c, lv: (g, c.int(), lv, 8), TypeError, r"codes must be Byte"),
    (
        "codes-strided",
        lambda g, c, lv: (g, torch.stack([c, c], 1)[:, 0], lv, 8),
        RuntimeError,
        r"codes must be a contiguous 1-d",
    ),
    ("levels-count", lambda g, c, lv: (g, c, lv[:16], 8), RuntimeError, r"2\*\*bits = 256"),
    ("levels-dtype", lambda g, c, lv: (g, c, lv.half(), 8), TypeError, r"levels must be Float"),
    ("bits-mismatch", lambda g, c, lv: (g, c, lv, 4), RuntimeError, r"2\*\*bits = 16 levels"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_backward_errors(case, device):
    _, make, error, message = case
    x, levels, thresholds, interval_codes, search, bits = _args(device)
    packed = torch.ops.sugar.relu_forward_codes(x, levels, thresholds, interval_codes, search, 8)[1]
    with pytest.raises(error, match=message):
        torch.ops.sugar.relu_backward_codes(*make(torch.ones_like(x), packed, levels))


def test_issue_crash_case_in_subprocess():
    """The issue's reproducer (search[0] = 100000) killed the process with SIGSEGV."""
    code = """
import torch, sugar_kernels
from sugar_kernels import code_tables as codes
dev = torch.device("cpu")
levels, thresholds, interval_codes = codes.tables("bsilu", 1.67, "all", 8, dev, torch.float32)
search = codes.search_table("bsilu", 1.67, "all", 8, dev, torch.float32).clone()
search[0] = 100000
try:
    torch.ops.sugar.relu_forward_codes(torch.randn(4096), levels, thresholds, interval_codes,
                                       search, 8)
except RuntimeError as e:
    print("raised:", e)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "raised:" in done.stdout and "search[0] (the scan length)" in done.stdout
