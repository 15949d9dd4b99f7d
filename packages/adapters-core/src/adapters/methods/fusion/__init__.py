"""AdapterFusion (Pfeiffer et al., 2021): attention over the outputs of several bottleneck adapters.

``layer`` is the fusion layer, ``registry`` the per-model bookkeeping (and the forward keyword
``output_adapter_fusion_attentions``), ``fuser`` runs a Fuse block at one place for
``ComposedBottlenecks``, ``io`` the reference on-disk format and ``api`` the model methods (the
AdapterTrainer checkpoint kind is :mod:`adapters.training.fusion_checkpoint`).
"""

from .layer import FusionLayer
from .registry import Fusion, FusionRegistry

__all__ = ["Fusion", "FusionLayer", "FusionRegistry"]
