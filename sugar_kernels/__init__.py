"""sugar-kernels: fused ReLU-forward / surrogate-gradient-backward (SUGAR) kernels."""

from .api import (
    BACKENDS,
    SugarReLU,
    available_backends,
    build_info,
    convert,
    strip,
    sugar_relu,
)
from .code_tables import BITS, levels, quantizer
from .export import export_onnx
from .inductor import compile_mode, get_compile_mode, set_compile_mode
from .reference import paper_formula
from .surrogates import REGIONS, SURROGATES, grad_factor

__all__ = [
    "BACKENDS",
    "BITS",
    "REGIONS",
    "SURROGATES",
    "SugarReLU",
    "available_backends",
    "build_info",
    "compile_mode",
    "convert",
    "export_onnx",
    "get_compile_mode",
    "grad_factor",
    "levels",
    "paper_formula",
    "quantizer",
    "set_compile_mode",
    "strip",
    "sugar_relu",
]
__version__ = "0.1.0"
