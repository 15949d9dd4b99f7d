"""The LoRA family (LoRA, (IA)^3, VeRA, DoRA) on attention projections and FFN linears."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...composition import AdapterCompositionBlock, Average, BatchSplit, Parallel, Split, Stack
from ...configs.lora import DoRAConfig, DvoRAConfig, IA3Config, LoRAConfig, VeraConfig
from ...core.gating import GateSite, GatingScores
from ...core.reference_format import expected_keys
from ...errors import AdapterConfigError, AdapterError, AdapterLoadError, CompositionError
from ...plugins.spec import CROSS_ROLE_PREFIX, ModelSpec
from ..base import AdapterMethod, adapter_dict
from ..init import seeded
from .base import LoRAFamilyModule
from .ia3 import IA3
from .layer import LoRA
from .linears import ADAPTABLE_LINEARS, is_adaptable, linear_features, weight_out_in
from .place import LoRAPlace
from .quantized import compute_dtype, warn_requantized
from .vera import SHARED_CONTAINER, VeRA, VeRAShared, convert_saved_vera

if TYPE_CHECKING:
    from ...core.state import AdapterState

# (place name, module path inside the layer, enabled slices of a fused linear or None)
Target = tuple[str, str, "tuple[bool, ...] | None"]
# Where output_adapter_gating_scores reports a gate of each FFN place (attention places: "selfattn_lora").
# attn_matrices entry -> the spec role it adapts ("o": the attention output projection).
_ATTENTION_ROLES = {"q": "q", "k": "k", "v": "v", "o": "attn_out"}
_GATE_LOCATIONS = {"ffn_in": "intermediate_lora", "ffn_out": "output_lora", "ffn_gate": "gate_lora"}


def build_module(
    config: LoRAConfig, linear: nn.Module, slices: tuple[bool, ...] | None, shared: VeRAShared | None
) -> LoRAFamilyModule:
    """The module of the config's variant for one linear layer (``nn.Linear`` or ``Conv1D``)."""
    in_features, out_features = linear_features(linear)
    if config.composition_mode == "scale":
        return IA3(in_features, out_features, config, slices)
    # DoRA's magnitude starts at the norms of its output rows. Only DoRA reads the weight: a quantized one is
    # dequantized for it alone (and a torchao format that cannot dequantize still takes the other variants).
    weight = weight_out_in(linear) if config.use_dora else None
    if config.is_vera:
        return VeRA(in_features, out_features, config, shared, slices, weight=weight)
    return LoRA(in_features, out_features, config, slices, weight=weight)


def _merged_conflict(reason: str, fix: str) -> CompositionError:
    """The error for a setup that the merged adapter cannot run; ``merge_adapter`` words the fix its own way."""
    error = CompositionError(f"{reason[0].upper()}{reason[1:]}: {fix}.")
    error.merged_reason = reason
    return error


class LoRAMethod(AdapterMethod):
    name = "lora"
    config_class = LoRAConfig
    config_names = {
        "lora": LoRAConfig(),
        "ia3": IA3Config(),
        "vera": VeraConfig(),
        "dora": DoRAConfig(),
        "dvora": DvoRAConfig(),
    }
    supports_merge = True
    supported_blocks = frozenset({Stack, Split, BatchSplit, Parallel, Average})

    def conformance_configs(self) -> dict[str, LoRAConfig]:
        return {
            "lora": LoRAConfig(),
            "lora_all_linears": LoRAConfig(
                r=4, alpha=16, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True
            ),
            "ia3": IA3Config(),
            # q and v (a partial fused projection on DeBERTa), non-square FFN linears, alpha != r.
            "dora": DoRAConfig(r=4, alpha=16, intermediate_lora=True, output_lora=True),
            "vera": VeraConfig(intermediate_lora=True, output_lora=True),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], LoRAPlace]:
        return state.method_data.setdefault(self.name, {})

    @staticmethod
    def roles(config: LoRAConfig) -> list[str]:
        roles = [_ATTENTION_ROLES[m] for m in config.attn_matrices] if config.selfattn_lora else []
        if config.intermediate_lora:
            roles.append("ffn_in")
        if config.output_lora:
            roles.append("ffn_out")
        if config.gate_lora:
            roles.append("ffn_gate")
        return roles

    def _targets(self, state: AdapterState, config: LoRAConfig, spec: ModelSpec) -> list[Target]:
        """The linears of one layer (described by ``spec``, the layer's view of the model spec)."""
        roles = self.roles(config)
        if not roles:
            raise AdapterConfigError(
                "This LoRAConfig targets no layer: enable selfattn_lora, intermediate_lora, output_lora or gate_lora."
            )
        missing = [r for r in roles if r not in spec.linears and spec.fused_linear_for(r) is None]
        if missing:
            declared = sorted([*spec.linears, *(r for f in spec.fused_linears for r in f.roles)])
            raise AdapterConfigError(
                f"LoRA targets {missing} but the layout of {state.base_model.config.model_type!r} declares no "
                f"such linear layers (declared: {declared}); choose attn_matrices among the declared roles, and set "
                "intermediate_lora / output_lora / gate_lora to False where ffn_in / ffn_out / ffn_gate is not "
                "declared."
            )
        if config.selfattn_lora:
            # A decoder layer's cross-attention projections take the same attention LoRA (as in the reference).
            roles += [CROSS_ROLE_PREFIX + m for m in config.attn_matrices if CROSS_ROLE_PREFIX + m in spec.linears]
        # One module per plain linear, and one per fused linear covering all its enabled roles.
        targets: dict[str, Target] = {}
        for role in roles:
            fused = spec.fused_linear_for(role)
            if fused is None:
                targets[role] = (role, spec.linears[role], None)
            else:
                place = "".join(fused.roles)
                targets[place] = (place, fused.path, tuple(r in roles for r in fused.roles))
        return list(targets.values())

    def add(self, state: AdapterState, name: str, config: LoRAConfig) -> None:
        linears: dict[tuple[int, str], tuple[nn.Module, tuple[bool, ...] | None]] = {}
        targets_of: dict[int, list[Target]] = {}  # one target list per layer spec (per stack)
        for layer_idx, layer in state.layers:
            spec = state.layer_spec(layer_idx)
            if id(spec) not in targets_of:
                targets_of[id(spec)] = self._targets(state, config, spec)
            if layer_idx in config.leave_out:
                continue
            for place_name, path, slices in targets_of[id(spec)]:
                linear = layer.get_submodule(path)
                if not is_adaptable(linear):
                    kinds = " or ".join(cls.__name__ for cls in ADAPTABLE_LINEARS)
                    raise AdapterConfigError(f"LoRA needs {kinds} at {path!r}, found {type(linear).__name__}.")
                linears[(layer_idx, place_name)] = (linear, slices)
        if not linears:
            return
        records = state.modules_of(name)
        shared = self._add_shared(state, name, config, linears) if config.is_vera else None
        places = self._places(state)
        with seeded(config.init_weights_seed):
            for key, (linear, slices) in linears.items():
                if key not in places:
                    places[key] = LoRAPlace(linear)
                module = build_module(config, linear, slices, shared).to(linear.weight.device, compute_dtype(linear))
                places[key].loras[name] = module
                records[state.module_path(module)] = module
        if config.use_gating:
            GatingScores.ensure(state)

    def _add_shared(self, state: AdapterState, name: str, config: LoRAConfig, linears: dict) -> VeRAShared:
        """VeRA's random matrices, sized for the largest targeted linear (smaller ones use a corner)."""
        sizes = [(linear_features(linear), slices) for linear, slices in linears.values()]
        max_in = max(in_features for (in_features, _), _ in sizes)
        max_out = max(out_features // (len(slices) if slices else 1) for (_, out_features), slices in sizes)
        # Seeded on their own, first, as the reference draws them: a seeded reference adapter is rebuilt exactly.
        with seeded(config.init_weights_seed):
            shared = VeRAShared(config.r, max_in, max_out, config.init_weights)
        first = next(iter(linears.values()))[0]
        shared = shared.to(first.weight.device, compute_dtype(first))
        container = adapter_dict(state.base_model, SHARED_CONTAINER)
        if name in container._modules:
            raise AdapterConfigError(
                f"Adapter {name!r} has shared parameters already; use one VeRA config per adapter."
            )
        container[name] = shared
        state.modules_of(name)[state.module_path(shared)] = shared
        return shared

    def delete(self, state: AdapterState, name: str) -> None:
        for place in self._places(state).values():
            place.loras._modules.pop(name, None)
        container = state.base_model._modules.get(SHARED_CONTAINER)
        if container is not None and isinstance(container._modules.get(name), VeRAShared):
            del container._modules[name]
        GatingScores.release_if_unused(state)

    def gate_sites(self, state: AdapterState) -> list[GateSite]:
        # The reference's location keys: attention projections (self and cross) share "selfattn_lora".
        sites = []
        for (layer_idx, place_name), place in self._places(state).items():
            location = _GATE_LOCATIONS.get(place_name, "selfattn_lora")
            for name, module in place.loras._modules.items():
                if module.gate is not None:
                    sites.append(GateSite(name, layer_idx, location, module.gate))
        return sites

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        # A merged adapter acts through the weights in every forward pass; it gets no hook of its own.
        listed = setup.flatten() if setup is not None else []
        names = [n for n in listed if n != state.merged]
        block = None
        if setup is not None and not (isinstance(setup, Stack) and all(isinstance(c, str) for c in setup)):
            if state.merged in listed:
                raise _merged_conflict(
                    f"{setup!r} uses {state.merged!r}, which is merged into the weights; a composition block "
                    "needs it unmerged",
                    "call reset_adapter() first",
                )
            block = setup
        places = self._places(state)
        if state.merged in listed:
            self._check_merged_in_stack(state, listed, places)
        for key, place in places.items():
            here = () if state.skipped(key) else tuple(n for n in names if n in place.loras._modules)
            place.activate(here, block, state.parallel)

    @staticmethod
    def _check_merged_in_stack(state: AdapterState, listed: list[str], places: dict) -> None:
        """Refuse a Stack that the merged adapter, being in the weights, would compute otherwise.

        Merged, an adapter acts as part of the linear, before every hook. Unmerged, each additive
        adapter of a Stack reads the previous one's update, which the merged weights no longer
        give apart; only (IA)^3 vectors, which multiply, give the same product either way. So
        where the merged adapter shares a layer with another adapter of the Stack, the Stack
        must be of (IA)^3 adapters. Nor can AdapterDrop take the merged update out of a layer.
        """
        merged = state.merged
        for key, place in places.items():
            if merged not in place.loras._modules:
                continue
            if state.skipped(key):
                raise _merged_conflict(
                    f"adapter {merged!r} is merged into the weights of layer {key[0]}, so skip_layers cannot "
                    "bypass it there",
                    "activate it without skip_layers, or call reset_adapter() first",
                )
            here = tuple(n for n in listed if n in place.loras._modules)
            if len(here) > 1 and any(place.loras[n].composition_mode != "scale" for n in here):
                others = [n for n in here if n != merged]
                raise _merged_conflict(
                    f"in the Stack of {list(here)}, {merged!r} is merged into the weights, so on the layers they "
                    "share it acts as part of the linear, before the others; that equals the Stack for (IA)^3 "
                    "adapters only",
                    f"activate {others} alone to apply them on top of the merged weights, or call reset_adapter() "
                    "first",
                )

    # -- merging --------------------------------------------------------------------------
    def _places_of(self, state: AdapterState, name: str) -> list[LoRAPlace]:
        places = [p for p in self._places(state).values() if name in p.loras._modules]
        if not places:
            raise AdapterError(f"LoRA adapter {name!r} has no modules to merge.")
        return places

    def merge(self, state: AdapterState, name: str) -> None:
        places = self._places_of(state, name)
        # Every place is checked before any weight changes, so a refused merge changes nothing.
        with torch.no_grad():
            scales = [place.merge_scale(name) for place in places]
        done = []
        try:
            for place, scale in zip(places, scales, strict=True):
                place.merge(name, scale)
                done.append(place)
        except BaseException:
            # (Out of memory, say): the layers merged so far are restored, so nothing stays half merged.
            for place in done:
                place.unmerge(name)
            raise
        warn_requantized(name, [place.requantized for place in places if place.requantized is not None])

    def unmerge(self, state: AdapterState, name: str) -> None:
        for place in self._places_of(state, name):
            place.unmerge(name)

    # -- loading ---------------------------------------------------------------------------
    def convert_saved_weights(
        self, state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Read VeRA adapters saved by the reference library.

        The reference stores ``d`` and ``b`` as square matrices: diagonal ones become vectors,
        and any off-diagonal entry puts the adapter's VeRA modules in full mode (see
        :func:`~.vera.convert_saved_vera`). It does not save the shared random matrices; those
        are rebuilt from the config's ``init_weights_seed`` (drawn as the reference draws them),
        and without a seed the adapter cannot be reproduced, which raises a clear error.
        """
        saved_key = {ours: saved for saved, ours in expected_keys(state, name, saved_name).items()}
        veras = [
            (module, saved_key[f"{path}.vera_D"], saved_key[f"{path}.vera_B"])
            for path, module in state.modules_of(name).items()
            if isinstance(module, VeRA)
        ]
        try:
            tensors = convert_saved_vera(veras, tensors) if veras else dict(tensors)
        except AdapterLoadError as error:
            raise AdapterLoadError(f"Cannot load VeRA adapter {saved_name!r}: {error}") from None
        for path, module in state.modules_of(name).items():
            if isinstance(module, VeRAShared):
                keys = [saved_key[f"{path}.lora_A"], saved_key[f"{path}.lora_B"]]
                if all(k not in tensors for k in keys):
                    seed = state.configs[name].init_weights_seed
                    if not seed:  # the reference ignores a seed of 0 too
                        raise AdapterLoadError(
                            f"The VeRA adapter {saved_name!r} was saved without its shared random matrices A and B "
                            "(the reference library does not save them) and without init_weights_seed, so they "
                            "cannot be rebuilt and its outputs cannot be reproduced. Retrain it with "
                            "init_weights_seed set, or with this library, which saves them."
                        )
                    tensors.update({k: v.clone() for k, v in zip(keys, (module.lora_A, module.lora_B), strict=True)})
        return tensors
