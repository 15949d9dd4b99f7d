"""LoRA on the attention projections and the FFN linears, unmerged (hooks) or merged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...composition import AdapterCompositionBlock
from ...configs.lora import LoRAConfig
from ...errors import AdapterConfigError, AdapterError, CompositionError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..init import seeded
from .layer import LoRA

if TYPE_CHECKING:
    from ...core.state import AdapterState


class LoRAPlace:
    """The LoRA modules of one linear layer, and the forward hook that adds their update."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear
        self.loras: AdapterDict = adapter_dict(linear, "loras")
        self.container = self.loras
        self._handle = None
        self._modules: tuple[LoRA, ...] = ()

    def activate(self, names: tuple[str, ...]) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._modules = tuple(self.loras[n] for n in names)
        if not names:
            return
        if len(names) > 1:
            if any(module.fused for module in self._modules):
                raise CompositionError(
                    f"Stack of LoRA adapters {list(names)} on a fused linear layer (e.g. q/k/v in one "
                    "projection): a stacked LoRA reads the previous LoRA's output, which has another size."
                )
            for module in self._modules[1:]:
                if module.lora_A.shape[1] != module.lora_B.shape[0]:
                    raise CompositionError(
                        f"Stack of LoRA adapters {list(names)} on a non-square linear layer: a stacked LoRA "
                        "reads the previous LoRA's output, which needs in_features == out_features."
                    )
        hook = self._add_single if len(names) == 1 else self._add_stack
        self._handle = self.linear.register_forward_hook(hook)

    def _add_single(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self._modules[0].add_delta(output, args[0])

    def _add_stack(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # Stack as defined by the reference library: each LoRA reads the previous one's update.
        hidden = args[0]
        for lora in self._modules:
            hidden = lora.delta(hidden)
        return output + hidden


class LoRAMethod(AdapterMethod):
    name = "lora"
    config_class = LoRAConfig
    config_names = {"lora": LoRAConfig()}
    supports_merge = True

    def conformance_configs(self) -> dict[str, LoRAConfig]:
        return {
            "lora": LoRAConfig(),
            "lora_all_linears": LoRAConfig(
                r=4, alpha=16, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True
            ),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], LoRAPlace]:
        return state.method_data.setdefault(self.name, {})

    @staticmethod
    def roles(config: LoRAConfig) -> list[str]:
        roles = list(config.attn_matrices) if config.selfattn_lora else []
        if config.intermediate_lora:
            roles.append("ffn_in")
        if config.output_lora:
            roles.append("ffn_out")
        return roles

    def add(self, state: AdapterState, name: str, config: LoRAConfig) -> None:
        roles = self.roles(config)
        if not roles:
            raise AdapterConfigError(
                "This LoRAConfig targets no layer: enable selfattn_lora, intermediate_lora or output_lora."
            )
        spec = state.spec
        missing = [r for r in roles if r not in spec.linears and spec.fused_linear_for(r) is None]
        if missing:
            declared = sorted([*spec.linears, *(r for f in spec.fused_linears for r in f.roles)])
            raise AdapterConfigError(
                f"LoRA targets {missing} but the {state.base_model.config.model_type} plugin declares no such "
                f"linear layers (declared: {declared})."
            )
        # One LoRA module per plain linear, and one per fused linear covering all its enabled roles.
        # Each target: (place name, module path, enabled slices of a fused linear or None).
        targets: dict[str, tuple[str, tuple[bool, ...] | None]] = {}
        for role in roles:
            fused = spec.fused_linear_for(role)
            if fused is None:
                targets[role] = (spec.linears[role], None)
            else:
                targets["".join(fused.roles)] = (fused.path, tuple(r in roles for r in fused.roles))
        places = self._places(state)
        records = state.modules_of(name)
        with seeded(config.init_weights_seed):
            for layer_idx, layer in state.layers:
                if layer_idx in config.leave_out:
                    continue
                for place_name, (path, slices) in targets.items():
                    linear = layer.get_submodule(path)
                    if not isinstance(linear, nn.Linear):
                        raise AdapterConfigError(f"LoRA needs nn.Linear at {path!r}, found {type(linear).__name__}.")
                    key = (layer_idx, place_name)
                    if key not in places:
                        places[key] = LoRAPlace(linear)
                    module = LoRA(linear.in_features, linear.out_features, config, slices=slices).to(
                        linear.weight.device, linear.weight.dtype
                    )
                    places[key].loras[name] = module
                    records[state.module_path(module)] = module

    def delete(self, state: AdapterState, name: str) -> None:
        for place in self._places(state).values():
            place.loras._modules.pop(name, None)

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        names = [n for n in (setup.flatten() if setup is not None else []) if n != state.merged]
        for place in self._places(state).values():
            place.activate(tuple(n for n in names if n in place.loras._modules))

    def merge(self, state: AdapterState, name: str) -> None:
        self._apply_delta(state, name, sign=1.0)

    def unmerge(self, state: AdapterState, name: str) -> None:
        self._apply_delta(state, name, sign=-1.0)

    def _apply_delta(self, state: AdapterState, name: str, sign: float) -> None:
        places = [p for p in self._places(state).values() if name in p.loras._modules]
        if not places:
            raise AdapterError(f"LoRA adapter {name!r} has no modules to merge.")
        with torch.no_grad():
            for place in places:
                delta = place.loras[name].delta_weight().to(place.linear.weight.dtype)
                place.linear.weight.add_(delta, alpha=sign)
