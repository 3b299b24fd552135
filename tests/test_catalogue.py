"""The surrogate catalogue (``sk.SURROGATES``) is the one list every language reads: the C++
enum, names and dispatch are generated from its source (csrc/generate_surrogates.py), the Triton
ids are derived from it at import. Each reading must give the catalogue itself."""

from __future__ import annotations

import dataclasses
import runpy
from pathlib import Path

import pytest
import torch

import sugar_kernels as sk

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = runpy.run_path(str(ROOT / "csrc" / "generate_surrogates.py"))


def test_generator_reads_the_catalogue():
    """The generator's reading of the source (ast, without importing it) is the catalogue."""
    rows = GENERATOR["read_catalogue"]()
    fields = [f.name for f in dataclasses.fields(sk.surrogates.Surrogate) if f.name != "id"]
    expected = [{f: getattr(s, f) for f in fields} for s in sk.SURROGATES.values()]
    assert rows == expected


def test_ids_are_catalogue_positions():
    assert [s.id for s in sk.SURROGATES.values()] == list(range(len(sk.SURROGATES)))
    assert all(name == s.name for name, s in sk.SURROGATES.items())


def test_generated_header_is_current():
    """The header the extension was compiled with lists the catalogue's names, in its order."""
    header = GENERATOR["HEADER"]
    if not header.exists():
        pytest.skip(f"{header.name} not generated (the extension is not built)")
    assert header.read_text() == GENERATOR["render"](list(sk.SURROGATES))


@pytest.mark.skipif(not sk.build_info()["cpu_compiled"], reason="C++ CPU kernels not built")
def test_cpp_ops_accept_exactly_the_catalogue():
    x = torch.randn(5)
    for name in sk.SURROGATES:
        torch.ops.sugar.relu_backward(x, x, name, 1.0, "all")
    with pytest.raises(ValueError) as info:
        torch.ops.sugar.relu_backward(x, x, "foo", 1.0, "all")
    assert str(info.value).split("valid surrogates: ")[1].startswith(", ".join(sk.SURROGATES))


def test_triton_ids_are_catalogue_ids():
    exact = pytest.importorskip("sugar_kernels.triton_kernels.exact")
    assert exact.SURROGATE_IDS == {name: s.id for name, s in sk.SURROGATES.items()}
