"""ReFT (``loreft``, ``noreft``, ``direft``): interventions on the hidden states leaving each layer."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...composition import AdapterCompositionBlock, Average, BatchSplit, Parallel, Stack
from ...configs.reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from ...core.activation import building, current
from ...core.hook_order import HookStage, register_staged_forward_hook
from ...errors import AdapterConfigError
from ..base import AdapterDict, AdapterMethod, adapter_dict
from .composition import ComposedRefts
from .layer import ReftModule
from .positions import InterventionPositions

if TYPE_CHECKING:
    from ...core.state import AdapterState

# The module each layer gets for its interventions, named as in the reference format:
# "encoder.layer.0.reft_layer.refts.NAME.units.0.learned_source.weight".
HOLDER = "reft_layer"
POSITIONS_KEY = "reft.positions"


class ReftPlace:
    """The ReFT modules after one layer, and the forward hook that applies the active ones."""

    def __init__(
        self, layer: nn.Module, positions: InterventionPositions, padded: bool = True, from_encoder: bool = False
    ) -> None:
        holder = layer._modules.get(HOLDER)
        if holder is None:
            holder = nn.Module()
            layer.add_module(HOLDER, holder)
        self.refts: AdapterDict = adapter_dict(holder, "refts")
        self.container = self.refts
        self.layer = layer
        self.positions = positions
        # Whether the model's attention mask describes this layer's sequence (not in CLIP's vision tower).
        self.padded = padded
        # A decoder layer of an encoder-decoder: it intervenes at the positions of the encoder's sequence.
        self.from_encoder = from_encoder
        self._handle = None
        self._state = None

    def activate(
        self, names: tuple[str, ...], block: AdapterCompositionBlock | None = None, parallel_runtime=None
    ) -> None:
        """Apply ``names`` as a Stack, or run ``block`` (any other composition) when given, in the
        activation being built."""
        if not names:
            return
        if block is not None:
            hook = ComposedRefts(self.refts, self.positions, block, self.padded, self.from_encoder)
            hook.parallel_runtime = parallel_runtime
        else:
            # Resolved once here, not on every forward pass.
            hook = functools.partial(self._intervene, tuple(self.refts[n] for n in names))
        building().add(self, hook, attach=self)

    def attach_hooks(self, state) -> None:
        self._state = state
        # Ahead of the layer's readers: transformers records hidden states with a forward hook
        # on the layer, which must see the intervened output that the next layer receives.
        self._handle = register_staged_forward_hook(self.layer, self._run, HookStage.REPLACE)

    def detach_hooks(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _run(self, module: nn.Module, args: tuple, output):
        hook = current(self._state).plans.get(self)
        return hook(module, args, output) if hook is not None else None

    def _intervene(self, active: tuple[ReftModule, ...], module: nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        # A Stack applies its ReFT adapters in order, each to the previous one's output.
        for reft in active:
            hidden = reft(hidden, self.positions, self.padded, self.from_encoder)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class ReftMethod(AdapterMethod):
    name = "reft"
    config_class = ReftConfig
    config_names = {"loreft": LoReftConfig(), "noreft": NoReftConfig(), "direft": DiReftConfig()}
    # Positions are per sequence, so a sequence Split has no meaning; Average needs weights summing to 1.
    supported_blocks = frozenset({Stack, BatchSplit, Parallel, Average})

    def conformance_configs(self) -> dict[str, ReftConfig]:
        return {
            "loreft": LoReftConfig(),
            "noreft": NoReftConfig(),
            "direft": DiReftConfig(),
            # Both position ranges (the suffix respects padding), one shared unit, rank 2, an activation.
            "loreft_prefix_suffix_tied": LoReftConfig(
                prefix_positions=2, suffix_positions=2, tied_weights=True, r=2, non_linearity="tanh", dropout=0.1
            ),
            "noreft_suffix_layers": NoReftConfig(prefix_positions=0, suffix_positions=3, layers=[0, 1]),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], ReftPlace]:
        return state.method_data.setdefault(self.name, {})

    def _positions(self, state: AdapterState) -> InterventionPositions:
        if POSITIONS_KEY not in state.method_data:
            state.method_data[POSITIONS_KEY] = InterventionPositions(state.base_model, state)
        return state.method_data[POSITIONS_KEY]

    def add(self, state: AdapterState, name: str, config: ReftConfig) -> None:
        indices = [i for i, _ in state.layers]
        if config.layers != "all":
            unknown = sorted(set(config.layers) - set(indices))
            if unknown:
                raise AdapterConfigError(
                    f"ReFT layers {unknown} do not exist in this {state.base_model.config.model_type} model; "
                    f"its layers are {indices}."
                )
        chosen = [(i, layer) for i, layer in state.layers if config.uses_layer(i)]
        if not chosen:
            raise AdapterConfigError(
                f"This ReFT config selects no layer of the model (layers={config.layers!r}, "
                f"leave_out={list(config.leave_out)}, model layers {indices}); select at least one."
            )
        # Sized per layer: the stacks of a dual model (CLIPModel) have different hidden sizes.
        smallest = min(state.layer_hidden_size(i) for i, _ in chosen)
        if config.orthogonality and config.r > smallest:
            raise AdapterConfigError(
                f"LoReFT's R has r={config.r} orthonormal rows, at most the hidden size {smallest}; "
                "lower r or set orthogonality=False."
            )
        reference = next(state.base_model.parameters())
        dtype = getattr(torch, config.dtype) if config.dtype else reference.dtype
        positions = self._positions(state)
        # The mask capture lives as long as the model has a ReFT adapter: an adapter activated by
        # AdapterSetup inside the forward pass itself needs this forward's mask.
        positions.attach()
        places = self._places(state)
        records = state.modules_of(name)
        for layer_idx, layer in chosen:
            key = (layer_idx, "reft")
            if key not in places:
                places[key] = ReftPlace(
                    layer, positions, _reads_padding_mask(state, layer_idx), _in_decoder(state, layer_idx)
                )
            module = ReftModule(state.layer_hidden_size(layer_idx), config, dtype).to(reference.device)
            # Follow the model's train/eval mode, so that dropout is off in a model in eval mode.
            module.train(layer.training)
            places[key].refts[name] = module
            records[state.module_path(module)] = module

    def after_load(self, state: AdapterState, name: str) -> None:
        # A file's sign diagonal means what torch's orthogonal map reads in it (see .orthogonal).
        for module in state.modules_of(name).values():
            if isinstance(module, ReftModule):
                for unit in module.units:
                    unit.read_saved_signs()

    def delete(self, state: AdapterState, name: str) -> None:
        places = self._places(state)
        for place in places.values():
            place.refts._modules.pop(name, None)
        if not any(place.refts._modules for place in places.values()) and POSITIONS_KEY in state.method_data:
            state.method_data[POSITIONS_KEY].detach()

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        names = setup.flatten() if setup is not None else []
        # Plain Stacks keep the fast path; any other setup runs through the composition engine.
        plain = setup is None or (isinstance(setup, Stack) and all(isinstance(c, str) for c in setup))
        block = None if plain else setup
        for key, place in self._places(state).items():
            here = () if state.skipped(key) else tuple(n for n in names if n in place.refts._modules)
            place.activate(here, block, state.parallel)


def _reads_padding_mask(state: AdapterState, layer_idx: int) -> bool:
    """Whether the model's 2-D attention mask describes this layer's positions.

    In a model of several stacks (CLIPModel) the mask belongs to the token stack; an image stack
    (its config has an ``image_size``) has no padding, whatever the text's mask says.
    """
    return not hasattr(state.layer_config(layer_idx), "image_size")


def _in_decoder(state: AdapterState, layer_idx: int) -> bool:
    """Whether the layer is a decoder layer of an encoder-decoder (it has a cross-attention).

    As in the reference library, such a layer intervenes at the positions of the encoder's sequence:
    the attention mask of the model's forward is the encoder's.
    """
    return state.layer_spec(layer_idx).cross_attention is not None
