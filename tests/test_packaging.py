"""What the distribution installs: only the top-level import name ``sugar_kernels``.

The Triton kernels live in the repository folder ``triton_kernels/`` but install as the
subpackage ``sugar_kernels.triton_kernels``: the top-level name ``triton_kernels`` belongs to
other projects (PyPI's ``triton-kernels``, Triton's own kernel library), and owning it would
shadow them or be shadowed.

Building a wheel compiles the C++ extension (minutes), so the test asks setuptools what its
``build_py`` step would put in the wheel (the same file list ``pip wheel`` copies, from the same
``pyproject.toml`` configuration) instead of building one. Checked by hand with a real
``SUGAR_NO_CUDA=1 pip wheel --no-build-isolation --no-deps .`` (see the README).
"""

import os
import subprocess
import sys
from pathlib import Path

import sugar_kernels

ROOT = Path(__file__).resolve().parent.parent

# Runs in a child process: setup.py imports torch and reads the environment at import time.
LIST_FILES = """
import json, os, sys
from setuptools import distutils  # noqa: F401  (setuptools' vendored distutils)
from distutils.core import run_setup
dist = run_setup("setup.py", stop_after="config")
build_py = dist.get_command_obj("build_py")
build_py.ensure_finalized()
modules = [(pkg, mod, os.path.relpath(path)) for pkg, mod, path in build_py.find_all_modules()]
exts = [ext.name for ext in dist.ext_modules or []]
print(json.dumps({"modules": modules, "extensions": exts}))
"""


def packaged() -> dict:
    env = dict(os.environ, SUGAR_NO_CUDA="1")
    env.pop("SUGAR_REQUIRE_CUDA", None)  # CI sets it; it contradicts SUGAR_NO_CUDA in setup.py
    proc = subprocess.run(
        [sys.executable, "-c", LIST_FILES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    import json

    return json.loads(out.strip().splitlines()[-1])


def test_distribution_installs_only_sugar_kernels_at_top_level():
    files = packaged()
    top_level = {pkg.split(".")[0] for pkg, _, _ in files["modules"]}
    top_level |= {name.split(".")[0] for name in files["extensions"]}
    assert top_level == {"sugar_kernels"}
    # the Triton kernels are in, under sugar_kernels, copied from the triton_kernels/ folder
    triton = {
        mod: path for pkg, mod, path in files["modules"] if pkg == "sugar_kernels.triton_kernels"
    }
    assert {"__init__", "exact", "code_modes"} <= set(triton)
    assert all(Path(p).parts[0] == "triton_kernels" for p in triton.values()), triton
    assert files["extensions"] == ["sugar_kernels._C"]


def test_in_tree_import_uses_the_subpackage_name_only():
    from sugar_kernels import triton_kernels

    assert Path(triton_kernels.__file__).resolve().parent == ROOT / "triton_kernels"
    assert triton_kernels.__name__ == "sugar_kernels.triton_kernels"
    assert sugar_kernels.triton_kernels is triton_kernels
    # nothing imported the top-level name (a second copy would also register the ops twice)
    assert "triton_kernels" not in sys.modules
