"""Bottleneck adapters: ``seq_bn``, ``double_seq_bn``, ``par_bn``, ``scaled_par_bn``, Compacter
(``compacter``, ``compacter++``), AdapterPlus and MAD-X invertible adapters (``seq_bn_inv``,
``double_seq_bn_inv``)."""

from __future__ import annotations

import functools
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...composition import AdapterCompositionBlock, Average, BatchSplit, Fuse, Parallel, Split, Stack
from ...configs.bottleneck import (
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    ParBnConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    bottleneck_size,
)
from ...core.gating import GateSite, GatingScores
from ...core.residual import LOCATIONS, ResidualBlockHooks, config_flag_of, holder_module
from ...errors import AdapterConfigError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..fusion.runtime import fusers_for
from ..init import seeded
from .batched import BatchedBottlenecks
from .composition import ComposedBottlenecks
from .invertible import invertible_adapter
from .layer import Bottleneck
from .model_places import INVERTIBLE_KEY, SHARED_KEY, InvertiblePlace, SharedPlace
from .phm import SharedPHMParameters

if TYPE_CHECKING:
    from ...core.state import AdapterState

# adapter-transformers 1.x kept invertible adapters in "invertible_lang_adapters".
_LEGACY_INVERTIBLE = re.compile(r"(^|\.)invertible_lang_adapters\.")


class BottleneckPlace:
    """The bottleneck adapters at one residual block of one layer, and their hooks."""

    def __init__(self, layer: nn.Module, holder_path: str, block) -> None:
        holder = holder_module(layer, holder_path)
        self.adapters: AdapterDict = adapter_dict(holder, "adapters")
        self.container = self.adapters
        self.hooks = ResidualBlockHooks(layer, block)

    def activate(
        self,
        names: tuple[str, ...],
        block: AdapterCompositionBlock | None = None,
        parallel_runtime=None,
        fuser=None,
    ) -> None:
        """Apply ``names`` as a Stack, or run ``block`` (any other composition) when given, in the
        activation being built.

        ``fuser`` runs the block's Fuse blocks here (see :mod:`adapters.methods.fusion`).
        """
        # Resolve the modules once here, not on every forward pass.
        active = tuple(self.adapters[n] for n in names)
        if not names:
            self.hooks.remove()
        elif block is not None:
            composed = ComposedBottlenecks(self.adapters, block, fuser)
            composed.parallel_runtime = parallel_runtime
            # Parallel or BatchSplit of plain adapters: all at once (validated by ComposedBottlenecks first).
            self.hooks.install(BatchedBottlenecks.build(self.adapters, block, parallel_runtime) or composed)
        elif len(names) == 1:
            adapter = active[0]
            self.hooks.install(adapter.block_output, adapter.block_output_without_residual)
        else:
            self.hooks.install(functools.partial(_stack, active))


def _stack(
    active: tuple[Bottleneck, ...], h: torch.Tensor, x: torch.Tensor, layer_norm, summed: torch.Tensor | None
) -> torch.Tensor:
    hidden = h
    for adapter in active:
        # summed is h + x only for the first adapter; the next ones read the previous output.
        hidden, residual = adapter.pre_forward(hidden, x, layer_norm, summed if hidden is h else None)
        hidden = adapter(hidden, residual)
    return active[-1].post_forward(hidden, h, x, layer_norm)


class BottleneckMethod(AdapterMethod):
    name = "bottleneck"
    config_class = BnConfig
    supported_blocks = frozenset({Stack, Split, BatchSplit, Parallel, Average, Fuse})
    config_names = {
        "seq_bn": SeqBnConfig(),
        "pfeiffer": SeqBnConfig(),
        "double_seq_bn": DoubleSeqBnConfig(),
        "houlsby": DoubleSeqBnConfig(),
        "par_bn": ParBnConfig(),
        "parallel": ParBnConfig(),
        "scaled_par_bn": ParBnConfig(scaling="learned"),
        "scaled_parallel": ParBnConfig(scaling="learned"),
        "seq_bn_inv": SeqBnInvConfig(),
        "pfeiffer+inv": SeqBnInvConfig(),
        "double_seq_bn_inv": DoubleSeqBnInvConfig(),
        "houlsby+inv": DoubleSeqBnInvConfig(),
        "compacter": CompacterConfig(),
        "compacter++": CompacterPlusPlusConfig(),
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
            # Tiny test models have 32 hidden units: reduction 8 keeps the bottleneck a multiple of phm_dim.
            "compacter": CompacterConfig(reduction_factor=8),
            "compacter++": CompacterPlusPlusConfig(reduction_factor=8),
            # (shared_W_phm is left to the unit tests: models whose stacks differ in width refuse it.)
            "compacter_factorized_rule": CompacterConfig(
                reduction_factor=4, phm_dim=2, factorized_phm_rule=True, phm_rank=2
            ),
            "compacter_per_layer_rules": CompacterPlusPlusConfig(
                reduction_factor=8, shared_phm_rule=False, factorized_phm_W=False, phm_bias=False
            ),
            "adapter_plus": AdapterPlusConfig(reduction_factor=8),
            "seq_bn_inv": SeqBnInvConfig(),
            "double_seq_bn_inv_glow": DoubleSeqBnInvConfig(inv_adapter="glow"),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], Any]:
        return state.method_data.setdefault(self.name, {})

    def _place(self, state: AdapterState, layer_idx: int, layer: nn.Module, location: str) -> BottleneckPlace:
        places = self._places(state)
        key = (layer_idx, location)
        if key not in places:
            block = getattr(state.layer_spec(layer_idx), LOCATIONS[location])
            places[key] = BottleneckPlace(layer, block.holder, block)
        return places[key]

    def _invertible_place(self, state: AdapterState) -> InvertiblePlace:
        places = self._places(state)
        if INVERTIBLE_KEY not in places:
            # The bare body has no LM head, so no inverse is hooked where the spec wants none.
            head_model = state.model if state.spec.invert_at_lm_head else state.base_model
            places[INVERTIBLE_KEY] = InvertiblePlace(head_model, state.base_model, state.spec.embeddings, state)
        return places[INVERTIBLE_KEY]

    def _shared_place(self, state: AdapterState) -> SharedPlace:
        places = self._places(state)
        if SHARED_KEY not in places:
            places[SHARED_KEY] = SharedPlace(state.base_model)
        return places[SHARED_KEY]

    def _sizes(self, state: AdapterState, config: BnConfig) -> dict[int, int]:
        """Bottleneck size per adapted layer, checked against the PHM constraints."""
        sizes = {
            layer_idx: bottleneck_size(state.layer_hidden_size(layer_idx), config.reduction_for_layer(layer_idx))
            for layer_idx, _ in state.layers
            if layer_idx not in config.leave_out
        }
        if not config.phm_layer:
            return sizes
        n = config.phm_dim
        shapes = {i: (state.layer_hidden_size(i), size) for i, size in sizes.items()}
        bad = {i: shape for i, shape in shapes.items() if shape[0] % n or shape[1] % n}
        if bad:
            raise AdapterConfigError(
                f"PHM layers (Compacter) need hidden and bottleneck sizes (hidden // reduction_factor) that are "
                f"multiples of phm_dim={n}; here (hidden, bottleneck) by layer: {bad}. Choose another "
                "reduction_factor or phm_dim."
            )
        if config.shared_W_phm and len(set(shapes.values())) > 1:
            raise AdapterConfigError(
                f"shared_W_phm=True shares one W across layers, but (hidden, bottleneck) sizes differ per layer "
                f"({shapes}); use one reduction_factor for all layers or shared_W_phm=False."
            )
        return sizes

    def add(self, state: AdapterState, name: str, config: BnConfig) -> None:
        for location, block_attr in LOCATIONS.items():
            if getattr(config, location) and all(
                config_flag_of(getattr(state.layer_spec(i), block_attr), location) != location for i, _ in state.layers
            ):
                raise AdapterConfigError(
                    f"{type(config).__name__} asks for {location}=True but the "
                    f"{state.base_model.config.model_type} plugin declares no {block_attr} that it places (the "
                    "block may follow another flag, ResidualBlock.config_flag); set it to False."
                )
        sizes = self._sizes(state, config)
        reference = next(state.base_model.parameters())
        records = state.modules_of(name)
        with seeded(config.init_weights_seed):
            shared = self._add_shared(state, name, config, sizes)
            for layer_idx, layer in state.layers:
                if layer_idx not in sizes:
                    continue
                for location, block_attr in LOCATIONS.items():
                    # Only decoder layers of encoder-decoder models have a cross-attention block.
                    block = getattr(state.layer_spec(layer_idx), block_attr)
                    if block is None or not getattr(config, config_flag_of(block, location)):
                        continue
                    if block.hooked and not config.original_ln_after:
                        raise AdapterConfigError(
                            f"{type(config).__name__}(original_ln_after=False) cannot be placed in a "
                            f"{state.base_model.config.model_type} model adapted through an AdapterModelInterface: "
                            "there the model adds the residual and applies its norms after the adapter itself "
                            "(the reference library refuses it too); use original_ln_after=True."
                        )
                    if block.hooked and block.residual is None and config.is_parallel:
                        raise AdapterConfigError(
                            f"{type(config).__name__} is a parallel adapter, which reads the residual input of "
                            f"the block it sits at ({location}), but the {state.base_model.config.model_type} "
                            "model names none there (an AdapterModelInterface without layer_pre_self_attn / "
                            "layer_pre_ffn; the reference library fails on it); use a sequential adapter."
                        )
                    place = self._place(state, layer_idx, layer, location)
                    module = Bottleneck(
                        state.layer_hidden_size(layer_idx), sizes[layer_idx], config, shared, hooked=block.hooked
                    )
                    # New modules follow the model's train/eval mode (dropout, stochastic depth).
                    module.train(state.base_model.training)
                    place.adapters[name] = module.to(reference.device, reference.dtype)
                    records[state.module_path(module)] = module
            if config.inv_adapter is not None:
                place = self._invertible_place(state)
                module = invertible_adapter(
                    config.inv_adapter, place.size, config.non_linearity, config.inv_adapter_reduction_factor
                )
                place.add(name, module.train(state.base_model.training).to(reference.device, reference.dtype))
                records[state.module_path(module)] = module
        if config.use_gating:
            GatingScores.ensure(state)

    def _add_shared(
        self, state: AdapterState, name: str, config: BnConfig, sizes: dict[int, int]
    ) -> SharedPHMParameters | None:
        if not (config.phm_layer and (config.shared_phm_rule or config.shared_W_phm)) or not sizes:
            return None
        place = self._shared_place(state)
        if name in place.container._modules:
            raise AdapterConfigError(
                f"Adapter {name!r} has shared PHM parameters already: give phm_layer=True with shared rules or "
                "weights to only one config of a ConfigUnion."
            )
        reference = next(state.base_model.parameters())
        first = next(iter(sizes))
        shared = SharedPHMParameters(config, state.layer_hidden_size(first), sizes[first])
        place.container[name] = shared.to(reference.device, reference.dtype)
        state.modules_of(name)[state.module_path(shared)] = shared
        return shared

    def delete(self, state: AdapterState, name: str) -> None:
        for key, place in self._places(state).items():
            if key == INVERTIBLE_KEY:
                place.delete(name)
            elif key != SHARED_KEY or isinstance(place.container._modules.get(name), SharedPHMParameters):
                # The shared container also holds other methods' tensors (VeRA's); remove only ours.
                place.container._modules.pop(name, None)
        GatingScores.release_if_unused(state)

    def gate_sites(self, state: AdapterState) -> list[GateSite]:
        sites = []
        for key, place in self._places(state).items():
            if key not in (INVERTIBLE_KEY, SHARED_KEY):
                for name, module in place.adapters._modules.items():
                    if module._modules.get("gate") is not None:
                        sites.append(GateSite(name, key[0], key[1], module.gate))
        return sites

    # -- loading ---------------------------------------------------------------------------
    def convert_saved_weights(
        self, state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Read invertible adapters of adapter-transformers 1.x and Compacters saved from bare models.

        Old files name the container ``invertible_lang_adapters``. The reference library saves
        the shared PHM tensors (``shared_parameters.<name>.*``) only from models with a head; a
        file saved from a bare model lacks them, and the reference then keeps freshly initialised
        ones. So does this library, with a warning, since such a file cannot reproduce its outputs.
        """
        tensors = {_LEGACY_INVERTIBLE.sub(r"\1invertible_adapters.", k): v for k, v in tensors.items()}
        shared = self._places(state).get(SHARED_KEY)
        module = shared.container._modules.get(name) if shared is not None else None
        if isinstance(module, SharedPHMParameters):
            prefix = f"{state.module_path(module)[: -len(name)]}{saved_name}."
            if not any(k.startswith(prefix) for k in tensors):
                warnings.warn(
                    f"The weights of adapter {saved_name!r} lack the shared PHM tensors ({prefix}*): the reference "
                    "library does not save them from a model without a head. They keep their fresh random "
                    "initialisation, so the adapter does not compute what it was trained to.",
                    stacklevel=4,
                )
                tensors.update({f"{prefix}{k}": v.detach().clone() for k, v in module.state_dict().items()})
        return tensors

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        names = setup.flatten() if setup is not None else []
        plain_stack = setup is None or (isinstance(setup, Stack) and all(isinstance(c, str) for c in setup))
        block = None if plain_stack else setup
        make_fuser = None
        if block is not None:
            # AdapterFusion: every Fuse of the setup needs its fusion layer (refused here, before any hook changes).
            make_fuser = fusers_for(state, block)
        for key, place in self._places(state).items():
            if key == INVERTIBLE_KEY:
                # Only the setup's first adapter may transform the embeddings (see InvertiblePlace).
                place.activate(setup, state.parallel)
            elif key != SHARED_KEY:
                fuser = make_fuser(key) if make_fuser is not None else None
                here = () if state.skipped(key) else tuple(n for n in names if n in place.adapters._modules)
                place.activate(here, block, state.parallel, fuser)
