"""Bottleneck adapters: one config family, one module, one method (hooked on residual blocks).

Also Compacter's PHM layers (``phm``), MAD-X invertible adapters (``invertible``) and their
model-level places (``model_places``).
"""

from .invertible import GLOWCoupling, InvertibleAdapter, NICECoupling
from .layer import Bottleneck
from .method import BottleneckMethod
from .phm import PHMLayer, SharedPHMParameters

__all__ = [
    "Bottleneck",
    "BottleneckMethod",
    "GLOWCoupling",
    "InvertibleAdapter",
    "NICECoupling",
    "PHMLayer",
    "SharedPHMParameters",
]
