"""Prefix tuning (``prefix_tuning``, ``prefix_tuning_flat``): learned keys/values in every self-attention layer.

Weights live where the reference library keeps them: each adapter's prefix module in the pool
``base_model.prefix_tuning.prefix_tunings.NAME.<prefix_key>`` and, with ``use_gating``, one gate
per layer at ``<self-attention>.prefix_tuning.prefix_gates.NAME``. At activation every layer with
an active prefix gets :class:`~adapters.core.attention.AttentionPrefixHooks`; each forward pass
computes that layer's slice of the prefix (``PrefixTuning.layer_key_values``), so no state is
carried between forward passes and gradient checkpointing recomputes it like any activation.
A plain Stack concatenates the prefixes directly; BatchSplit, Parallel and Average go through
:class:`~.composition.ComposedPrefixes`.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...composition import AdapterCompositionBlock, Average, BatchSplit, Parallel, Stack
from ...configs.prefix_tuning import PrefixTuningConfig
from ...configs.union import ConfigUnion
from ...core.attention import AttentionPrefixHooks
from ...core.gating import GateSite, GatingScores
from ...errors import AdapterConfigError, AdapterError
from ...plugins.spec import SelfAttention
from ..base import AdapterDict, AdapterMethod, adapter_dict
from ..init import seeded
from .composition import ComposedPrefixes, PrefixEntry, adapter_prefix
from .layer import FlatPrefixTuning, PrefixTuning, PrefixTuningGroup, PrefixTuningPool

if TYPE_CHECKING:
    from ...core.state import AdapterState

POOL = "prefix_tuning"  # base_model.<POOL>, and the per-layer holder of the gates
GATES = "prefix_gates"
# Reference files repeat the pool's tensors under every layer that links to it.
_LAYER_POOL_KEY = re.compile(r"^.+\.prefix_tuning\.pool\.(prefix_tunings\..+)$")


class PrefixPlace:
    """The self-attention of one layer: the active prefixes there, and the hooks that add them."""

    def __init__(self, layer_idx: int, layer: nn.Module, state: AdapterState, spec: SelfAttention) -> None:
        self.layer_idx = layer_idx
        self.prefix_key = spec.prefix_key
        self.attention = layer.get_submodule(spec.path)
        self.hooks = AttentionPrefixHooks(layer, spec)
        self._state = state

    def gates(self, create: bool = False) -> AdapterDict | None:
        holder = self.attention._modules.get(POOL)
        if holder is None:
            if not create:
                return None
            holder = nn.Module()
            self.attention.add_module(POOL, holder)
        return adapter_dict(holder, GATES)

    def drop_gate(self, name: str) -> None:
        gates = self.gates()
        if gates is not None:
            gates._modules.pop(name, None)
            if not gates._modules:  # leave the model's module tree as it was
                del self.attention._modules[POOL]

    @property
    def container(self) -> AdapterDict:
        """Adapter name to ``{"prefix": its prefix module, "gate": its gate here}`` (for ``get_adapter``)."""
        found = AdapterDict()
        pool = _pool(self._state)
        gates = self.gates()
        for name, group in pool.prefix_tunings._modules.items() if pool is not None else ():
            if self.layer_idx in group.layer_ids.get(self.prefix_key, ()):
                parts = nn.ModuleDict({"prefix": group[self.prefix_key]})
                if gates is not None and name in gates._modules:
                    parts["gate"] = gates[name]
                found[name] = parts
        return found

    def activate(self, setup: AdapterCompositionBlock | None, parallel_runtime=None) -> None:
        """Install the prefixes of ``setup``'s adapters here (in the activation being built): a plain Stack
        directly, other blocks composed."""
        pool, gates = _pool(self._state), self.gates()
        entries: dict[str, PrefixEntry] = {}
        for name in setup.flatten() if setup is not None else ():
            group = pool.prefix_tunings._modules.get(name) if pool is not None else None
            ids = group.layer_ids.get(self.prefix_key, ()) if group is not None else ()
            if self.layer_idx not in ids:
                continue
            gate = gates._modules.get(name) if gates is not None else None
            entries[name] = PrefixEntry(group[self.prefix_key], ids.index(self.layer_idx), gate)
        if not entries:
            self.hooks.remove()
            return
        needs_hidden = any(entry.gate is not None for entry in entries.values())
        if isinstance(setup, Stack) and all(isinstance(child, str) for child in setup):
            self.hooks.install(functools.partial(_stacked_prefix, tuple(entries.values())), needs_hidden)
        else:
            self.hooks.install(ComposedPrefixes(setup, entries, parallel_runtime), needs_hidden)


def _stacked_prefix(
    entries: tuple[PrefixEntry, ...], hidden: torch.Tensor | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """The prefix of a plain Stack: each adapter's in front of the previous ones (the reference's order)."""
    if len(entries) == 1:
        return (*adapter_prefix(entries[0], hidden, batch), None)
    parts = [adapter_prefix(entry, hidden, batch) for entry in reversed(entries)]
    keys = torch.cat([k.expand(batch, -1, -1, -1) for k, _ in parts], dim=2)
    values = torch.cat([v.expand(batch, -1, -1, -1) for _, v in parts], dim=2)
    return keys, values, None


def _pool(state: AdapterState) -> PrefixTuningPool | None:
    pool = state.base_model._modules.get(POOL)
    return pool if isinstance(pool, PrefixTuningPool) else None


def _attention_shape(config) -> tuple[int, int, int]:
    """(key/value heads, head size, hidden size) as the reference library sizes prefixes."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "d_kv", None) or config.hidden_size // config.num_attention_heads
    return heads, head_dim, config.hidden_size


class PrefixTuningMethod(AdapterMethod):
    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    config_names = {"prefix_tuning": PrefixTuningConfig(), "prefix_tuning_flat": PrefixTuningConfig(flat=True)}
    # Split has no meaning for prefixes: every position of a sequence attends to the same keys.
    supported_blocks = frozenset({Stack, BatchSplit, Parallel, Average})

    def conformance_configs(self) -> dict[str, PrefixTuningConfig]:
        return {
            "prefix_tuning": PrefixTuningConfig(),
            "prefix_tuning_flat": PrefixTuningConfig(flat=True),
            "prefix_tuning_gated": PrefixTuningConfig(
                prefix_length=6, bottleneck_size=16, use_gating=True, shared_gating=False, dropout=0.1
            ),
        }

    def _places(self, state: AdapterState) -> dict[tuple[int, str], PrefixPlace]:
        return state.method_data.setdefault(self.name, {})

    @staticmethod
    def attention_places(state: AdapterState, config: PrefixTuningConfig) -> list[tuple[int, nn.Module, SelfAttention]]:
        """(layer index, layer, attention) of every place that gets a prefix, layer by layer.

        A layer has its self-attention and, in an encoder-decoder's decoder, its cross-attention
        (``cross_prefix``); ``encoder_prefix=False`` skips self-attentions keyed ``encoder_prefix``.
        """
        places = []
        for idx, layer in state.layers:
            if idx in config.leave_out:
                continue
            spec = state.layer_spec(idx)
            if spec.self_attention is not None and (
                config.encoder_prefix or not spec.self_attention.prefix_key.startswith("encoder")
            ):
                places.append((idx, layer, spec.self_attention))
            if spec.cross_attention is not None and config.cross_prefix:
                places.append((idx, layer, spec.cross_attention))
        return places

    def add(self, state: AdapterState, name: str, config: PrefixTuningConfig) -> None:
        if all(state.layer_spec(idx).self_attention is None for idx, _ in state.layers):
            raise AdapterConfigError(
                f"Prefix tuning needs the self-attention modules of the model, but the "
                f"{state.base_model.config.model_type} plugin declares none (ModelSpec.self_attention)."
            )
        attention_places = self.attention_places(state, config)
        if not attention_places:
            return  # the core reports an adapter without modules
        shapes = {_attention_shape(state.layer_config(idx)) for idx, _, _ in attention_places}
        if len(shapes) > 1:
            raise AdapterConfigError(f"Prefix tuning needs layers of one attention shape; found {sorted(shapes)}.")
        heads, head_dim, hidden = shapes.pop()
        pool = _pool(state)
        if pool is None:
            if POOL in state.base_model._modules or hasattr(state.base_model, POOL):
                raise AdapterError(f"{type(state.base_model).__name__} has an attribute {POOL!r} of its own.")
            pool = PrefixTuningPool()
            state.base_model.add_module(POOL, pool)
        prefixes = adapter_dict(pool, "prefix_tunings")
        reference = next(state.base_model.parameters())
        records = state.modules_of(name)
        places = self._places(state)
        layer_ids: dict[str, tuple[int, ...]] = {}
        for idx, _, attention in attention_places:
            layer_ids[attention.prefix_key] = (*layer_ids.get(attention.prefix_key, ()), idx)
        with seeded(config.init_weights_seed):
            group = PrefixTuningGroup(layer_ids)
            prefix_class = FlatPrefixTuning if config.flat else PrefixTuning
            for prefix_key, ids in layer_ids.items():
                group[prefix_key] = prefix_class(len(ids), heads, hidden, head_dim, config)
            group.to(reference.device, reference.dtype)
            prefixes[name] = group
            records[state.module_path(group)] = group
            for idx, layer, attention in attention_places:
                key = (idx, attention.prefix_key)
                if key not in places:
                    places[key] = PrefixPlace(idx, layer, state, attention)
                if config.use_gating:
                    gate = nn.Linear(hidden, 1 if config.shared_gating else 2)
                    nn.init.normal_(gate.weight, mean=0.0, std=0.02)
                    gate.to(reference.device, reference.dtype)
                    places[key].gates(create=True)[name] = gate
                    records[state.module_path(gate)] = gate
        if config.use_gating:
            GatingScores.ensure(state)

    def delete(self, state: AdapterState, name: str) -> None:
        for place in self._places(state).values():
            place.drop_gate(name)
        pool = _pool(state)
        if pool is not None:
            pool.prefix_tunings._modules.pop(name, None)
            if not pool.prefix_tunings._modules:
                del state.base_model._modules[POOL]
        GatingScores.release_if_unused(state)

    def gate_sites(self, state: AdapterState) -> list[GateSite]:
        sites = []
        for place in self._places(state).values():
            gates = place.gates()
            for name, gate in gates._modules.items() if gates is not None else ():
                sites.append(GateSite(name, place.layer_idx, place.prefix_key, gate))
        return sites

    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        for key, place in self._places(state).items():
            place.activate(None if state.skipped(key) else setup, state.parallel)

    def convert_saved_weights(
        self, state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Drop the copies of the pool that reference files repeat under every layer."""
        converted = {}
        for key, value in tensors.items():
            match = _LAYER_POOL_KEY.match(key)
            if match is None:
                converted[key] = value
                continue
            pool_key = f"{POOL}.{match.group(1)}"
            if pool_key in tensors and not torch.equal(tensors[pool_key], value):
                raise AdapterError(f"{key} differs from {pool_key}; the file holds two versions of one prefix.")
            converted.setdefault(pool_key, value)
        return converted

    def eject(self, state: AdapterState, name: str) -> None:
        """Replace adapter ``name``'s MLP-reparametrized prefixes by the flat prefixes they compute."""
        config = state.require(name)
        pool = _pool(state)
        group = pool.prefix_tunings._modules.get(name) if pool is not None else None
        if group is None:
            raise AdapterError(f"Adapter {name!r} has no prefix tuning to eject.")
        for place_key, prefix in list(group.items()):
            if not isinstance(prefix, PrefixTuning):
                continue
            flat = FlatPrefixTuning(
                prefix.n_layers, prefix.n_heads, prefix.input_size, prefix.head_dim, prefix.config.replace(flat=True)
            )
            with torch.no_grad():
                weights = prefix.flat_weights().detach().clone()
            flat.control_trans = nn.Parameter(weights, requires_grad=prefix.wte.weight.requires_grad)
            flat.train(prefix.training)
            group[place_key] = flat
        state.configs[name] = _flat_config(config)
        state.apply_setup(state.active_setup)  # places hold the old modules


def _flat_config(config):
    if isinstance(config, ConfigUnion):
        return ConfigUnion(*(_flat_config(c) for c in config.configs))
    return config.replace(flat=True) if isinstance(config, PrefixTuningConfig) else config
