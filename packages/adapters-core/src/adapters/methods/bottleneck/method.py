"""Bottleneck adapters (``seq_bn``, ``double_seq_bn``, ``par_bn``, ``scaled_par_bn``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...composition import AdapterCompositionBlock
from ...configs.bottleneck import BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from ...core.residual import ResidualBlockHooks
from ...errors import AdapterConfigError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..init import seeded
from .layer import Bottleneck

if TYPE_CHECKING:
    from ...core.state import AdapterState

LOCATIONS = {"mh_adapter": "attention_block", "output_adapter": "ffn_block"}


class BottleneckPlace:
    """The bottleneck adapters at one residual block of one layer, and their hooks."""

    def __init__(self, layer: nn.Module, holder_path: str, block) -> None:
        holder = _get_or_create(layer, holder_path)
        self.adapters: AdapterDict = adapter_dict(holder, "adapters")
        self.container = self.adapters
        self.hooks = ResidualBlockHooks(layer, block)
        self._active: tuple[Bottleneck, ...] = ()

    def activate(self, names: tuple[str, ...]) -> None:
        # Resolve the modules once here, not on every forward pass.
        self._active = tuple(self.adapters[n] for n in names)
        if names:
            self.hooks.install(self._single if len(names) == 1 else self._stack)
        else:
            self.hooks.remove()

    def _single(self, h: torch.Tensor, x: torch.Tensor, layer_norm) -> torch.Tensor:
        adapter = self._active[0]
        hidden, residual = adapter.pre_forward(h, x, layer_norm)
        return adapter.post_forward(adapter(hidden, residual), h, x, layer_norm)

    def _stack(self, h: torch.Tensor, x: torch.Tensor, layer_norm) -> torch.Tensor:
        hidden = h
        for adapter in self._active:
            hidden, residual = adapter.pre_forward(hidden, x, layer_norm)
            hidden = adapter(hidden, residual)
        return self._active[-1].post_forward(hidden, h, x, layer_norm)


def _get_or_create(layer: nn.Module, path: str) -> nn.Module:
    # A model without a module at the holder path gets an empty container there, so weight keys
    # read e.g. "transformer.layer.0.output_adapters.adapters.NAME..." as in the reference.
    parent = layer
    for part in path.split("."):
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    return parent


class BottleneckMethod(AdapterMethod):
    name = "bottleneck"
    config_class = BnConfig
    config_names = {
        "seq_bn": SeqBnConfig(),
        "pfeiffer": SeqBnConfig(),
        "double_seq_bn": DoubleSeqBnConfig(),
        "houlsby": DoubleSeqBnConfig(),
        "par_bn": ParBnConfig(),
        "scaled_par_bn": ParBnConfig(scaling="learned"),
    }

    def conformance_configs(self) -> dict[str, BnConfig]:
        return {
            "seq_bn": SeqBnConfig(),
            "double_seq_bn": DoubleSeqBnConfig(),
            "par_bn": ParBnConfig(),
            "scaled_par_bn": ParBnConfig(scaling="learned"),
            "seq_bn_options": SeqBnConfig(
                reduction_factor={"0": 4, "default": 8},
                ln_before=True,
                ln_after=True,
                residual_before_ln=False,
                use_gating=True,
                non_linearity="gelu",
                dropout=0.1,
            ),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], BottleneckPlace]:
        return state.method_data.setdefault(self.name, {})

    def _place(self, state: AdapterState, layer_idx: int, layer: nn.Module, location: str) -> BottleneckPlace:
        places = self._places(state)
        key = (layer_idx, location)
        if key not in places:
            block = getattr(state.spec, LOCATIONS[location])
            places[key] = BottleneckPlace(layer, block.holder, block)
        return places[key]

    def add(self, state: AdapterState, name: str, config: BnConfig) -> None:
        for location, block_attr in LOCATIONS.items():
            if getattr(config, location) and getattr(state.spec, block_attr) is None:
                raise AdapterConfigError(
                    f"{type(config).__name__} asks for {location}=True but the "
                    f"{state.base_model.config.model_type} plugin declares no {block_attr}."
                )
        if config.inv_adapter is not None:
            raise AdapterConfigError(
                "Invertible adapters (inv_adapter) are not available in this release; set inv_adapter=None."
            )
        reference = next(state.base_model.parameters())
        records = state.modules_of(name)
        with seeded(config.init_weights_seed):
            for layer_idx, layer in state.layers:
                if layer_idx in config.leave_out:
                    continue
                size = max(1, int(state.hidden_size // config.reduction_for_layer(layer_idx)))
                for location in LOCATIONS:
                    if not getattr(config, location):
                        continue
                    place = self._place(state, layer_idx, layer, location)
                    module = Bottleneck(state.hidden_size, size, config).to(reference.device, reference.dtype)
                    place.adapters[name] = module
                    records[state.module_path(module)] = module

    def delete(self, state: AdapterState, name: str) -> None:
        for place in self._places(state).values():
            place.adapters._modules.pop(name, None)

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        names = setup.flatten() if setup is not None else []
        for place in self._places(state).values():
            place.activate(tuple(n for n in names if n in place.adapters._modules))
