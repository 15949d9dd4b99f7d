"""What an adapter method implements to plug into the core."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..composition.blocks import Stack
from ..configs.base import AdapterConfig
from ..errors import AdapterError
from ..names import check_adapter_name

if TYPE_CHECKING:
    from ..composition.blocks import AdapterCompositionBlock
    from ..core.gating import GateSite
    from ..core.state import AdapterState


class AdapterDict(nn.ModuleDict):
    """A ModuleDict whose keys may equal ``nn.Module`` attribute names (``train``, ``double``).

    ``nn.ModuleDict`` refuses keys that shadow attributes; adapter names are user data, so they
    are stored in ``_modules`` directly and only reachable by item access.
    """

    def __setitem__(self, key: str, module: nn.Module) -> None:
        self._modules[check_adapter_name(key)] = module


def adapter_dict(owner: nn.Module, attribute: str) -> AdapterDict:
    """Return ``owner.<attribute>``, creating an empty AdapterDict there on first use."""
    existing = owner._modules.get(attribute)
    if existing is None:
        existing = AdapterDict()
        owner.add_module(attribute, existing)
    elif not isinstance(existing, AdapterDict):
        raise AdapterError(
            f"{type(owner).__name__} already has a submodule named {attribute!r} that is not an "
            "adapter container; the model plugin must point to another holder module."
        )
    return existing


class AdapterMethod(ABC):
    """An adapter method: its config class, shorthands and how it attaches to a model.

    Methods create their modules under the model's own modules (so weight keys are the model's
    module paths) and record each module's path in ``state.modules_of(name)``; saving, loading,
    freezing and deleting are generic over those records.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AdapterConfig]]
    config_names: ClassVar[Mapping[str, AdapterConfig]] = {}
    supports_merge: ClassVar[bool] = False
    #: The composition blocks this method's adapters may sit in (checked at activation).
    supported_blocks: ClassVar[frozenset[type[AdapterCompositionBlock]]] = frozenset({Stack})
    #: False for methods that act once per model rather than in each layer (prompt tuning): their
    #: configs have no ``leave_out``, and the conformance suite checks that instead.
    layer_wise: ClassVar[bool] = True

    def conformance_configs(self) -> Mapping[str, AdapterConfig]:
        """Configs the plugin conformance suite runs for this method (all its variants)."""
        return self.config_names

    def input_positions(self, config: AdapterConfig, seq_len: int) -> torch.Tensor | None:
        """Where the input's ``seq_len`` positions are in the output, for methods that add positions.

        ``None`` (the default) means the output has the input's positions only. Prompt tuning
        inserts prompt positions and returns the indices of the input tokens among them; the
        conformance suite compares those positions.
        """
        return None

    @abstractmethod
    def add(self, state: AdapterState, name: str, config: AdapterConfig) -> None:
        """Create the adapter's modules (checking first that the model can hold them)."""

    @abstractmethod
    def delete(self, state: AdapterState, name: str) -> None:
        """Remove the adapter's modules."""

    @abstractmethod
    def activate(self, state: AdapterState, setup: AdapterCompositionBlock | None) -> None:
        """Install the forward hooks the setup needs, and remove the others."""

    def merge(self, state: AdapterState, name: str) -> None:
        raise AdapterError(f"{self.name} adapters cannot be merged into the model weights.")

    def convert_saved_weights(
        self, state: AdapterState, name: str, saved_name: str, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Turn loaded weights of another layout (e.g. the reference's) into this method's; default: as is.

        ``tensors`` are keyed as saved (with ``saved_name``, without the head model's prefix);
        the adapter ``name`` has just been added and is about to receive them.
        """
        return tensors

    def after_load(self, state: AdapterState, name: str) -> None:
        """Read values just copied from a file into adapter ``name`` as the file means them; default: nothing.

        Called once the loaded tensors are in the adapter's parameters (:func:`adapters.io.adapter_io.load_into`).
        ReFT splits the file's sign diagonal into the signs and the row scale it trains with.
        """
        return None

    def unmerge(self, state: AdapterState, name: str) -> None:
        raise AdapterError(f"{self.name} adapters cannot be merged into the model weights.")

    def gate_sites(self, state: AdapterState) -> list[GateSite]:
        """The gates of this method's adapters (``use_gating``), for ``output_adapter_gating_scores``."""
        return []
