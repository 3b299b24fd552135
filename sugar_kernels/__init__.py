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
from .codes import BITS, levels, quantizer
from .export import export_onnx
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
    "convert",
    "export_onnx",
    "grad_factor",
    "levels",
    "paper_formula",
    "quantizer",
    "strip",
    "sugar_relu",
]
__version__ = "0.1.0"
