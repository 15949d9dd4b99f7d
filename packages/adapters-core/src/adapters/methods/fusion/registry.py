"""The AdapterFusions of one model: configs, fusion layers at each place, attention recording."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...configs.bottleneck import BnConfig
from ...configs.fusion import AdapterFusionConfig
from ...core.activation import PerThread
from ...core.context import register_pass_pre_hook
from ...core.residual import LOCATIONS, config_flag_of, holder_module
from ...errors import AdapterConfigError, AdapterNameError
from ..base import adapter_dict
from .layer import FusionLayer

if TYPE_CHECKING:
    from ...core.state import AdapterState

#: Key of the registry in ``AdapterState.method_data``.
KEY = "fusion"
#: The forward keyword that asks for the fusion attentions, and the output field holding them.
OUTPUT_FLAG = "output_adapter_fusion_attentions"
OUTPUT_FIELD = "adapter_fusion_attentions"
#: The container of fusion layers beside the bottleneck adapters (the reference's weight keys).
CONTAINER = "adapter_fusion_layer"

PlaceKey = tuple[int, str]  # (layer index, "mh_adapter" | "output_adapter")


@dataclass
class Fusion:
    """One AdapterFusion: its config, the adapters it fuses and its layer at each place.

    Example:
        >>> fusion = FusionRegistry.of(model.adapters_state).require("a,b")  # doctest: +SKIP
        >>> fusion.layers[(0, "output_adapter")].value.weight.shape  # doctest: +SKIP
        torch.Size([32, 32])
    """

    config: AdapterFusionConfig
    adapter_names: list[str]
    layers: dict[PlaceKey, FusionLayer] = field(default_factory=dict)
    #: path relative to the base model -> layer (the paths of the weight keys)
    paths: dict[str, FusionLayer] = field(default_factory=dict)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        for path, layer in self.paths.items():
            yield from layer.named_parameters(prefix=f"{prefix}{path}")


class FusionRegistry:
    """The fusions of a model (``state.method_data["fusion"]``), created on the first one.

    While the model has a fusion, a forward pre-hook on the model takes the keyword
    ``output_adapter_fusion_attentions``; with ``True`` the output gains ``adapter_fusion_attentions``
    (see :meth:`_attach_attentions`). A model without fusions has no hook.

    Example:
        >>> model.add_adapter_fusion(["a", "b"])  # doctest: +SKIP
        >>> sorted(FusionRegistry.of(model.adapters_state).fusions)  # doctest: +SKIP
        ['a,b']
    """

    def __init__(self, state: AdapterState) -> None:
        self.state = state
        self.fusions: dict[str, Fusion] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._now = PerThread(recording=None)

    @property
    def recording(self) -> dict[str, dict[int, dict[str, torch.Tensor]]] | None:
        """Filled during this thread's forward pass that asked for attentions: name -> layer -> place -> probs."""
        return self._now.recording

    @classmethod
    def of(cls, state: AdapterState, create: bool = False) -> FusionRegistry | None:
        registry = state.method_data.get(KEY)
        if registry is None and create:
            registry = state.method_data[KEY] = cls(state)
        return registry

    def require(self, name: str) -> Fusion:
        if name not in self.fusions:
            raise AdapterNameError(
                f"No AdapterFusion named {name!r}. Added fusions: {sorted(self.fusions)}; add it with "
                "model.add_adapter_fusion(...) or model.load_adapter_fusion(...)."
            )
        return self.fusions[name]

    # -- adding and deleting ------------------------------------------------------------
    def add(self, name: str, adapter_names: list[str], config: AdapterFusionConfig) -> Fusion:
        """Create the fusion layer at every place where all fused adapters sit (as the reference does).

        The place follows the adapters' configs (``mh_adapter``/``output_adapter``) in every
        layer, including layers their ``leave_out`` skips, so weight files match the reference's.
        """
        state = self.state
        flags = _common_locations(state, adapter_names)
        fusion = Fusion(config, list(adapter_names))
        reference = next(state.base_model.parameters())
        self.fusions[name] = fusion
        try:
            for location in LOCATIONS:
                for layer_idx, layer in state.layers:
                    block = getattr(state.layer_spec(layer_idx), LOCATIONS[location])
                    # cross_adapter: encoder layers have no cross-attention block; a block may follow
                    # another flag (a BERT decoder's cross-attention takes the mh_adapter adapters).
                    if config_flag_of(block, location) not in flags:
                        continue
                    container = adapter_dict(holder_module(layer, block.holder), CONTAINER)
                    module = FusionLayer(config, state.layer_hidden_size(layer_idx), _dropout(state, layer_idx, config))
                    module.train(state.base_model.training)
                    container[name] = module.to(reference.device, reference.dtype)
                    fusion.layers[(layer_idx, location)] = module
                    fusion.paths[state.module_path(module)] = module
        except BaseException:
            self.delete(name)
            raise
        self._install_output_hooks()
        return fusion

    def delete(self, name: str) -> None:
        fusion = self.fusions.pop(name, None)
        if fusion is None:
            return
        for path in fusion.paths:
            container = self.state.base_model.get_submodule(path.rsplit(".", 1)[0])
            container._modules.pop(name, None)
        if not self.fusions:
            self._remove_output_hooks()

    # -- attention outputs ----------------------------------------------------------------
    def record(self, name: str, key: PlaceKey, probs: torch.Tensor) -> None:
        if self.recording is not None:
            self.recording.setdefault(name, {}).setdefault(key[0], {})[key[1]] = probs.detach()

    def _install_output_hooks(self) -> None:
        if self._handles:
            return
        model = self.state.model
        self._handles.append(register_pass_pre_hook(self.state, model, self._take_flag))
        self._handles.append(model.register_forward_hook(self._attach_attentions, always_call=True))

    def _remove_output_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _take_flag(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The model's own forward does not know the keyword: take it out before the call.
        self._now.recording = {} if kwargs.pop(OUTPUT_FLAG, False) else None
        return args, kwargs

    def _attach_attentions(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Add the recorded attentions to the output, as the reference library does.

        A ``ModelOutput`` gets the field ``adapter_fusion_attentions``; a tuple output gets them as
        its last element. They are ``{fusion name: {layer index: {"output_adapter" | "mh_adapter":
        probabilities (batch, seq, n adapters)}}}``, detached tensors.
        """
        now = self._now
        recorded, now.recording = now.recording, None
        if recorded is None:
            return None
        if isinstance(output, tuple):
            return (*output, recorded)
        output[OUTPUT_FIELD] = recorded
        return output


def _common_locations(state: AdapterState, adapter_names: list[str]) -> list[str]:
    configs = {}
    for name in adapter_names:
        config = state.require(name)
        if not isinstance(config, BnConfig):
            raise AdapterConfigError(
                f"AdapterFusion fuses bottleneck adapters, but {name!r} is a {type(config).__name__} adapter. "
                "Fuse adapters added with a bottleneck config such as 'seq_bn' or 'double_seq_bn'."
            )
        configs[name] = config
    locations = []
    for location in ("mh_adapter", "output_adapter", "cross_adapter"):
        values = {name: bool(getattr(config, location)) for name, config in configs.items()}
        if len(set(values.values())) > 1:
            raise AdapterConfigError(
                f"The fused adapters disagree on {location}: {values}. A fusion layer attends over the adapters "
                "of one place, so every fused adapter must sit at the same places (e.g. all seq_bn)."
            )
        if all(values.values()):
            locations.append(location)
    return locations


def _dropout(state: AdapterState, layer_idx: int, config: AdapterFusionConfig) -> float:
    # An explicit 0.0 means no dropout (the reference falls back to the model's value then).
    if config.dropout_prob is not None:
        return float(config.dropout_prob)
    return float(getattr(state.layer_config(layer_idx), "attention_probs_dropout_prob", 0.0) or 0.0)
