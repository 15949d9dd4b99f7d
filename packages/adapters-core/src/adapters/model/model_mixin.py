"""The adapter API that ``adapters.init`` adds to a model."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from ..composition import AdapterCompositionBlock
from ..configs.base import AdapterConfig, load_config
from ..core import reference_format
from ..core.state import AdapterState
from ..errors import AdapterConfigError, AdapterError, AdapterLoadError, AdapterNameError
from ..files.atomic import atomic_directory
from ..files.paths import named_child
from ..io import adapter_io, hub, static_head
from ..io import peft as peft_format
from ..methods.fusion import api as fusion_api
from ..methods.init import initial_values_unneeded
from ..names import check_adapter_name, check_saved_name
from . import dry_run, hotswap, merging
from .averaging import average_adapter as _average_adapter

DEFAULT_CONFIG = "seq_bn"
_F = TypeVar("_F", bound=Callable[..., Any])


def _changes_adapters(method: _F) -> _F:
    """Run ``method`` with the model to itself: forward passes of other threads in flight finish first,
    and passes that start meanwhile wait (see :meth:`AdapterState.changing`)."""

    @functools.wraps(method)
    def with_model_held(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.adapters_state.changing():
            return method(self, *args, **kwargs)

    return with_model_held  # type: ignore[return-value]


class ModelAdaptersMixin:
    """Adapter methods of a model; mixed into the model's class by :func:`adapters.init`.

    Example:
        >>> import adapters
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        ...                              intermediate_size=37, vocab_size=100))
        >>> adapters.init(model)
        >>> model.add_adapter("sst2", config="lora", set_active=True)
        >>> model.active_adapters
        Stack['sst2']
    """

    adapters_state: AdapterState

    # -- adding and removing ----------------------------------------------------------------
    @_changes_adapters
    def add_adapter(
        self, adapter_name: str, config: Any = None, overwrite_ok: bool = False, set_active: bool = False
    ) -> None:
        """Add a new adapter; ``config`` is a name (``"lora"``), a shorthand string, a dict or a config.

        A config with more parameters than ``dry_run.PARAMETER_FACTOR`` times the model's own (and
        above ``dry_run.PARAMETER_FLOOR``) is refused before it is allocated.
        """
        state = self.adapters_state
        check_adapter_name(adapter_name)
        resolved = load_config(DEFAULT_CONFIG if config is None else config)
        if adapter_name in state.configs:
            if not overwrite_ok:
                raise AdapterNameError(
                    f"An adapter named {adapter_name!r} exists already; pass overwrite_ok=True to replace it "
                    "or choose another name."
                )
            self.delete_adapter(adapter_name)
        self._add_adapter_modules(adapter_name, resolved)
        if set_active:
            self.set_active_adapters(adapter_name)

    def _add_adapter_modules(
        self, name: str, config: AdapterConfig, check: Callable[[AdapterState, str], None] | None = None
    ) -> None:
        """Add the adapter's modules; ``check`` (a loader's comparison with its file) sees them first on ``meta``."""
        state = self.adapters_state
        parts = state.methods_of(config)
        for method, part in parts:
            # Invertible adapters are a part of bottleneck configs that a model may refuse on its own.
            for refused in (method.name, *(("invertible",) if getattr(part, "inv_adapter", None) else ())):
                reason = state.spec.refused_methods.get(refused)
                if reason is not None:
                    raise AdapterConfigError(
                        f"{refused} adapters are not available for {state.base_model.config.model_type} models: "
                        f"{reason}"
                    )
        # Sizes first, without memory: a config too large for the model, or not fitting its weights
        # file, is refused before anything of its size is allocated.
        dry_run.trial(state, name, config, parts, self.training, check)
        dry_run.build(state, name, config, parts, self.training)

    @_changes_adapters
    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and all its parameters (deactivating and unmerging it first)."""
        state = self.adapters_state
        config = state.require(adapter_name)
        if state.merged == adapter_name:
            self.reset_adapter()
        if state.active_setup is not None and adapter_name in state.active_setup.flatten():
            remaining = [n for n in state.active_setup.flatten() if n != adapter_name]
            self.set_active_adapters(remaining or None, sorted(state.skip_layers))
        for method, _ in state.methods_of(config):
            method.delete(state, adapter_name)
        del state.configs[adapter_name]
        state.modules.pop(adapter_name, None)

    # -- activation and training ----------------------------------------------------------
    @_changes_adapters
    def set_active_adapters(self, adapter_setup: Any, skip_layers: list[int] | None = None) -> None:
        """Activate a setup (a name, a list of names or a block) for every forward pass; ``None`` deactivates.

        ``skip_layers`` (AdapterDrop): the layers listed run as if no adapter were there; places
        before the layers (invertible adapters, prompt tuning) still act, as in the reference.

        Example:
            >>> model.set_active_adapters("sst2", skip_layers=[0, 1, 2])  # doctest: +SKIP
        """
        state = self.adapters_state
        skip = state.resolve_skip_layers(skip_layers)
        state.apply_setup(state.resolve_setup(adapter_setup), skip)

    @property
    def active_adapters(self) -> AdapterCompositionBlock | None:
        """The active setup (a Stack), or ``None``."""
        return self.adapters_state.active_setup

    @active_adapters.setter
    def active_adapters(self, adapter_setup: Any) -> None:
        self.set_active_adapters(adapter_setup)

    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every parameter of the transformer body; heads are left alone."""
        for param in self.adapters_state.base_model.parameters():
            param.requires_grad = not freeze

    @_changes_adapters
    def train_adapter(self, adapter_setup: Any, train_embeddings: bool = False) -> None:
        """Activate ``adapter_setup``, freeze the body and make only those adapters trainable."""
        state = self.adapters_state
        block = state.resolve_setup(adapter_setup)
        merging.refuse_training(state, block.flatten() if block is not None else [])
        self.train()
        self.freeze_model(True)
        for name in block.flatten() if block is not None else []:
            for _, param in state.parameters_of(name):
                param.requires_grad = True
        if train_embeddings:
            self.get_input_embeddings().weight.requires_grad = True
        # As in the reference, training activates the setup in every layer (skip_layers reset).
        state.apply_setup(block, frozenset())

    # -- averaging and merging ------------------------------------------------------------
    @_changes_adapters
    def average_adapter(
        self,
        adapter_name: str,
        adapter_list: list[str] | dict[str, float],
        weights: list[float] | None = None,
        combine_strategy: str = "linear",
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
        svd_rank: int | None = None,
        density: float | None = None,
        majority_sign_method: str = "total",
    ) -> None:
        """Add a new adapter whose parameters are the weighted average of existing adapters' parameters.

        ``combine_strategy`` is ``"linear"`` (any method; equal configs required), or for plain
        LoRA ``"lora_linear_only_negate_b"``, ``"lora_delta_w_svd"`` (with ``svd_rank``), and
        PEFT's ``"cat"``, ``"ties"``, ``"dare_linear"``, ``"dare_ties"``, ``"magnitude_prune"``
        (with ``density``) and their ``..._svd`` forms. ``adapter_list`` may also map names to
        weights. See :func:`adapters.model.averaging.average_adapter`.

        Example:
            >>> model.average_adapter("avg", ["a", "b"], weights=[0.7, 0.3])  # doctest: +SKIP
            >>> model.average_adapter("ties", ["a", "b"], weights=[1.0, 1.0], combine_strategy="ties",
            ...                       density=0.5, normalize_weights=False)  # doctest: +SKIP
        """
        _average_adapter(
            self,
            adapter_name,
            adapter_list,
            weights,
            combine_strategy,
            normalize_weights,
            overwrite_ok,
            set_active,
            svd_rank,
            density,
            majority_sign_method,
        )

    @_changes_adapters
    def merge_adapter(self, name: str) -> None:
        """Merge an adapter's update into the model weights (no cost at inference afterwards).

        Until :meth:`reset_adapter`, the merged adapter acts in every forward pass whatever the
        active setup, is frozen, and refuses ``train_adapter`` and setups that would compute
        otherwise with it merged (see :mod:`adapters.model.merging`). The weights it changes are
        kept, in CPU memory, so that the reset restores them bit for bit.
        """
        merging.merge(self.adapters_state, name)

    @_changes_adapters
    def reset_adapter(self) -> None:
        """Undo :meth:`merge_adapter`: the weights from before the merge come back bit for bit.

        They are the copies kept at merge time, so the result does not depend on what happened
        to the adapter since.
        """
        merging.reset(self.adapters_state)

    @_changes_adapters
    def eject_prefix_tuning(self, name: str) -> None:
        """Turn prefix tuning ``name`` from its MLP-reparametrized form into flat prefixes (same outputs).

        The MLP is needed for training only; afterwards the adapter holds just the prefixes and its
        config says ``flat=True``, so it saves and loads in the flat form.
        """
        state = self.adapters_state
        method = next((m for m in state.registry.methods if m.name == "prefix_tuning"), None)
        if method is None:
            raise AdapterError("No prefix-tuning method is installed.")
        method.eject(state, name)

    # -- AdapterFusion (methods/fusion) ---------------------------------------------------
    @_changes_adapters
    def add_adapter_fusion(
        self,
        adapter_names: Any,
        config: Any = "dynamic",
        name: str | None = None,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> None:
        """Add an AdapterFusion layer over bottleneck adapters (a Fuse, a list or "a,b"); config "dynamic"/"static".

        Example:
            >>> model.add_adapter_fusion(Fuse("sst2", "mnli"), config="dynamic", set_active=True)  # doctest: +SKIP
        """
        fusion_api.add_adapter_fusion(self, adapter_names, config, name, overwrite_ok, set_active)

    @_changes_adapters
    def delete_adapter_fusion(self, adapter_names: Any) -> None:
        """Remove an AdapterFusion layer (by Fuse, list or name), deactivating a setup that uses it."""
        fusion_api.delete_adapter_fusion(self, adapter_names)

    @_changes_adapters
    def train_adapter_fusion(self, adapter_setup: Any, unfreeze_adapters: bool = False) -> None:
        """Activate a setup with Fuse blocks and train only their fusion layers (and the adapters if asked)."""
        fusion_api.train_adapter_fusion(self, adapter_setup, unfreeze_adapters)

    def save_adapter_fusion(
        self,
        save_directory: str | os.PathLike,
        adapter_names: Any,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
    ) -> None:
        """Write ``adapter_fusion_config.json`` and the fusion weights, atomically."""
        fusion_api.save_adapter_fusion(self, save_directory, adapter_names, meta_dict, use_safetensors)

    def save_all_adapter_fusions(
        self, save_directory: str | os.PathLike, meta_dict: dict | None = None, use_safetensors: bool = True
    ) -> None:
        """Save every AdapterFusion to ``save_directory/<fusion name>``."""
        fusion_api.save_all_adapter_fusions(self, save_directory, meta_dict, use_safetensors)

    @_changes_adapters
    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path: str | os.PathLike,
        load_as: str | None = None,
        set_active: bool = False,
        use_safetensors: bool | None = None,
    ) -> str:
        """Load an AdapterFusion folder (ours or the reference's; its adapters must be loaded); return its name."""
        return fusion_api.load_adapter_fusion(self, adapter_fusion_name_or_path, load_as, set_active, use_safetensors)

    def get_fusion_regularization_loss(self) -> Any:
        """``0.01 * sum ||I - V||^2`` over trainable fusion value matrices (a tensor), or ``None``."""
        return fusion_api.get_fusion_regularization_loss(self)

    # -- saving and loading -------------------------------------------------------------
    def save_adapter(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
        with_head: bool = True,
        format: str = "adapters",
    ) -> None:
        """Write ``adapter_config.json`` and the weights (safetensors by default), atomically.

        Args:
            save_directory: the adapter's folder (created, or replaced as a whole).
            adapter_name: the adapter to save.
            meta_dict: extra fields for ``adapter_config.json``.
            use_safetensors: ``adapter.safetensors`` (default) or the pickle ``pytorch_adapter.bin``.
            with_head: on a model with a static head (``BertForSequenceClassification`` after
                ``adapters.init``), also write that head as the reference library does:
                ``head_config.json`` (``model_class``, ``label2id``, ``num_labels``, ...) and
                ``model_head.safetensors`` (``pytorch_model_head.bin`` with
                ``use_safetensors=False``), in the same whole-folder swap. ``False`` writes the
                adapter only. Models without a static head (``BertModel``) write the adapter only.
            format: ``"adapters"`` (the reference library's format) or ``"peft"``: PEFT's folder
                (``adapter_config.json`` with ``peft_type``, ``adapter_model.safetensors``), which
                ``PeftModel.from_pretrained`` and vLLM load: LoRA, DoRA (``alpha == r``, layers
                without a bias), (IA)^3 and a decoder's prompt tuning; with ``with_head``, the
                static head of a model that is not a language model as ``modules_to_save``.

        Example:
            >>> model.save_adapter("out/sst2", "sst2")  # doctest: +SKIP
            >>> sorted(os.listdir("out/sst2"))  # doctest: +SKIP
            ['adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors']
            >>> model.save_adapter("out/sst2-only", "sst2", with_head=False)  # doctest: +SKIP
        """
        state = self.adapters_state
        if format not in ("adapters", "peft"):
            raise ValueError(f"save_adapter(format={format!r}): choose 'adapters' (the default) or 'peft'.")
        if format == "peft":
            peft_format.save_peft_adapter(self, state, save_directory, adapter_name, with_head)
            return
        if not (with_head and static_head.has_static_head(self, state)):
            adapter_io.save_adapter(state, save_directory, adapter_name, meta_dict, use_safetensors)
            return
        state.require(adapter_name)
        with atomic_directory(save_directory, adapter_io.ADAPTER_FILES | static_head.HEAD_FILES) as scratch:
            adapter_io.write_adapter(state, scratch, adapter_name, meta_dict, use_safetensors)
            static_head.write_static_head(self, state, scratch, use_safetensors)

    def save_all_adapters(
        self, save_directory: str | os.PathLike, use_safetensors: bool = True, with_head: bool = True
    ) -> None:
        """Save every adapter to ``save_directory/<name>`` (refusing a name or link that leads outside it).

        ``with_head`` as in :meth:`save_adapter`: a static head is written into every adapter's folder.

        Example:
            >>> model.save_all_adapters("out")  # doctest: +SKIP
        """
        for name in self.adapters_state.configs:
            folder = named_child(save_directory, name)
            self.save_adapter(folder, name, use_safetensors=use_safetensors, with_head=with_head)

    def save_pretrained(self, save_directory: str | os.PathLike, save_adapters: bool = True, **kwargs: Any) -> None:
        """Save a plain transformers checkpoint, with each adapter beside it in ``adapters/<name>``
        (and each AdapterFusion in ``adapter_fusions/<name>``, for ``load_adapter_fusion``).

        The checkpoint holds the model's own weights only, so the model class it came from
        loads it without unexpected keys; adapters keep their own format and files. A merged
        LoRA is part of the model weights at that moment and is saved as such: ``config.json``
        then lists it in ``adapters_merged`` and its folder's config says ``"merged": true``,
        and ``load_adapter`` refuses that adapter on a model loaded from the checkpoint.

        Example:
            >>> model.save_pretrained("out")  # doctest: +SKIP
            >>> model = BertModel.from_pretrained("out"); adapters.init(model)  # doctest: +SKIP
            >>> model.load_adapter("out/adapters/sst2")  # doctest: +SKIP
        """
        state = self.adapters_state
        # Before writing anything, so a bad name (or link) leaves no half-written checkpoint behind.
        records = merging.saved_records(self)
        for name in state.configs:
            named_child(Path(save_directory) / "adapters", name)
        for name in fusion_api.fusion_names(state):
            named_child(Path(save_directory) / "adapter_fusions", name, "AdapterFusion")
        if "state_dict" not in kwargs:
            prefixes = tuple(f"{state.base_prefix}{path}." for records in state.modules.values() for path in records)
            prefixes += fusion_api.fusion_parameter_prefixes(state)
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}
        with merging.recorded_in_config(self.config, records):
            super().save_pretrained(save_directory, **kwargs)
        # Where adapters.init finds the interface again for a model loaded from this folder.
        adapter_io.write_interface(state, Path(save_directory))
        if save_adapters and state.configs:
            for name in state.configs:
                meta = {merging.ADAPTER_FIELD: True} if name == state.merged else None
                # The checkpoint holds a static head already: the adapter folders do not repeat it.
                folder = named_child(Path(save_directory) / "adapters", name)
                self.save_adapter(folder, name, meta_dict=meta, with_head=not static_head.has_static_head(self, state))
            self.save_all_adapter_fusions(Path(save_directory) / "adapter_fusions")

    @_changes_adapters
    def hotswap_adapter(self, adapter_name: str, adapter_name_or_path: str | os.PathLike, **kwargs: Any) -> None:
        """Load the weights saved in a folder into the existing adapter ``adapter_name``, in place.

        The folder is any that :meth:`load_adapter` reads (this library's, the reference's, PEFT's
        LoRA; ``kwargs`` go to it) and must hold an adapter of the same config, up to ``dropout``
        and ``init_weights``. Its weights are copied into ``adapter_name``'s parameters and buffers:
        the same modules and tensors with new values, so a ``torch.compile``'d model runs the new
        adapter without recompiling (what PEFT's ``hotswap_adapter`` does), and the adapter keeps
        its name, activation and trainability. Any error (another config, a corrupt file) leaves the
        adapter as it was; a merged adapter is refused (call ``reset_adapter()`` first).

        Example:
            >>> model.hotswap_adapter("task", "out/task_v2")  # doctest: +SKIP
        """
        state = self.adapters_state
        state.require(adapter_name)
        hotswap.check_not_merged(state, adapter_name)
        staging = f"hotswap_{uuid.uuid4().hex[:8]}"
        self.load_adapter(adapter_name_or_path, load_as=staging, with_head=False, **kwargs)
        try:
            hotswap.copy_weights(state, adapter_name, staging)
        finally:
            self.delete_adapter(staging)

    @_changes_adapters
    def load_adapter(
        self,
        adapter_name_or_path: str | os.PathLike,
        config: Any = None,
        load_as: str | None = None,
        set_active: bool = False,
        use_safetensors: bool | None = None,
        overwrite_ok: bool = False,
        with_head: bool = True,
        **kwargs: Any,
    ) -> str:
        """Load an adapter folder written by this library, the reference library or PEFT; return its name.

        A PEFT folder (``adapter_config.json`` with ``peft_type``) loads with PEFT's outputs where
        the two libraries compute the same function: LoRA and DoRA on the linear layers a model's
        spec names (q, k, v, o, the FFN's projections and gate), IA3 outside
        ``feedforward_modules``, a decoder's prompt tuning, and ``modules_to_save`` holding the
        model's head (loaded as the static head, see ``with_head``); anything else is refused
        with the field or method that cannot be mapped.

        ``with_head`` (default): on a model with a static head (``BertForSequenceClassification``
        after ``adapters.init``), a head saved in the folder (``head_config.json`` +
        ``model_head.safetensors`` or ``pytorch_model_head.bin``, by ``save_adapter`` here or in
        the reference library) is loaded into that head, and its ``label2id`` into the config. The
        head must come from the same model class with the same shapes (``num_labels``); otherwise
        the load is refused before anything changes. ``with_head=False`` loads the adapter only
        and keeps the model's head. Models without a static head ignore head files.

        Any error (missing or corrupt file, other model type or hidden size, mismatching weights)
        leaves the model exactly as it was. A string that is not a local folder is a Hugging Face
        Hub id (``"org/name"``), downloaded through the hub cache; ``revision`` (or ``version``),
        ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` apply to it, and
        ``HF_HUB_OFFLINE=1`` loads from the cache only.

        Loads are bounded by the files: the adapter is built on the ``meta`` device first and its
        shapes compared with the weights file's, so a config whose sizes do not fit its weights is
        refused before anything of its size is allocated. Weights with NaN or infinite values are
        refused; weights of another dtype are cast to the adapter's (with a warning), unless the
        cast would overflow. See :mod:`adapters.model.dry_run`.

        Example:
            >>> model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")  # doctest: +SKIP
            >>> adapters.init(model)  # doctest: +SKIP
            >>> model.load_adapter("out/sst2", set_active=True)  # adapter and classifier  # doctest: +SKIP
            'sst2'
            >>> model.load_adapter("out/sst2", load_as="body_only", with_head=False)  # doctest: +SKIP
            'body_only'
        """
        hub_options = {key: kwargs.pop(key) for key in hub.HUB_OPTIONS if key in kwargs}
        if kwargs:
            raise TypeError(f"load_adapter() got unsupported arguments {sorted(kwargs)}.")
        state = self.adapters_state
        folder = hub.resolve_adapter_folder(adapter_name_or_path, **hub_options)
        peft_adapter = None
        if peft_format.is_peft_folder(folder):
            # PEFT's folder: read as the config and weights save_adapter would have written.
            peft_adapter = peft_format.read_peft_adapter(state, folder, use_safetensors)
            data = peft_adapter.saved
        else:
            data = adapter_io.read_adapter_config(folder)
            reference_format.check_compatible(state, data, folder)
            adapter_io.check_interface(state, folder)
        saved_config = adapter_io.parse_saved_config(data, folder)
        if config is not None and load_config(config).to_dict() != saved_config.to_dict():
            raise AdapterLoadError(f"The config passed to load_adapter() differs from the one saved in {folder}.")
        saved_name = data.get("name") or folder.name
        name = check_adapter_name(load_as) if load_as else check_saved_name(saved_name, folder)
        if peft_adapter is None:
            tensors = adapter_io.read_adapter_weights(folder, data, use_safetensors)
        else:
            tensors = peft_adapter.tensors
        merging.refuse_merged_twice(self, data, tensors, folder)
        # Read and checked before the model changes: a head that does not fit refuses the whole load.
        head = None
        if with_head and peft_adapter is not None:
            head = peft_format.prepare_head(self, state, peft_adapter.head, folder)  # PEFT's modules_to_save
        elif with_head:
            head = static_head.prepare_static_head(self, state, folder, use_safetensors)
        previous = None
        if name in state.configs:
            if not overwrite_ok:
                raise AdapterNameError(f"An adapter named {name!r} exists already; pass load_as= or overwrite_ok=True.")
            previous = name
        # A short name of its own: the final name may be as long as names can be.
        staging = f"loading_{uuid.uuid4().hex[:8]}" if previous else name

        def fits_file(state: AdapterState, added: str) -> None:
            adapter_io.match_weights(state, added, saved_name, tensors, folder)

        # The weights come from the file: initialisations that need more than the model (a prompt
        # from text needs the tokenizer) are skipped.
        with initial_values_unneeded():
            self._add_adapter_modules(staging, saved_config, check=fits_file)
        try:
            adapter_io.load_into(state, staging, saved_name, tensors, folder)
        except BaseException:
            self.delete_adapter(staging)
            raise
        if head is not None:
            head.apply(self)
        if previous:
            self.delete_adapter(previous)
            self._rename_adapter(staging, name)
        if set_active:
            self.set_active_adapters(name)
        return name

    def push_adapter_to_hub(
        self,
        repo_id: str,
        adapter_name: str,
        datasets_tag: str | None = None,
        local_path: str | os.PathLike | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        overwrite_adapter_card: bool = False,
        create_pr: bool = False,
        revision: str | None = None,
        commit_description: str | None = None,
        adapter_card_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Upload an adapter (its folder and a generated ``README.md`` card) to the Hugging Face Hub.

        The card names the library (``adapters``), the base model (``config._name_or_path``), the
        method and config, tags, datasets and metrics (``adapter_card_kwargs``: ``tags``,
        ``language``, ``license``, ``metrics``, ``architecture_training``, ``results``,
        ``citation``). Returns the commit URL; ``load_adapter(repo_id)`` loads it back.

        Example:
            >>> model.push_adapter_to_hub("me/bert-sst2", "sst2", datasets_tag="glue",
            ...                           adapter_card_kwargs={"metrics": {"accuracy": 0.91}})  # doctest: +SKIP
        """
        return hub.push_adapter_to_hub(
            self,
            repo_id,
            adapter_name,
            datasets_tag=datasets_tag,
            local_path=local_path,
            commit_message=commit_message,
            private=private,
            token=token,
            overwrite_adapter_card=overwrite_adapter_card,
            create_pr=create_pr,
            revision=revision,
            commit_description=commit_description,
            adapter_card_kwargs=adapter_card_kwargs,
        )

    def _rename_adapter(self, old: str, new: str) -> None:
        state = self.adapters_state
        config = state.configs.pop(old)
        modules = state.modules.pop(old)
        renamed = {}
        for path, module in modules.items():
            new_path = path[: -len(old)] + new
            container = state.base_model.get_submodule(path.rsplit(".", 1)[0])
            container._modules = {(new if k == old else k): v for k, v in container._modules.items()}
            renamed[new_path] = module
        state.configs[new] = config
        state.modules[new] = renamed

    # -- inspection -------------------------------------------------------------------
    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """The adapter's modules by layer index and place (e.g. ``{0: {"output_adapter": ...}}``)."""
        state = self.adapters_state
        state.require(name)
        result: dict[int, dict[str, nn.Module]] = {}
        for method in state.registry.methods:
            for (layer_idx, place_name), place in state.method_data.get(method.name, {}).items():
                if name in place.container._modules:
                    result.setdefault(layer_idx, {})[place_name] = place.container[name]
        return result

    def iter_layers(self) -> Iterator[tuple[int, nn.Module]]:
        """Yield ``(index, layer module)`` for every transformer layer."""
        yield from self.adapters_state.layers

    def adapter_summary(self, as_dict: bool = False) -> str | list[dict[str, Any]]:
        """A table of adapters: architecture, parameter count and share, active and trainable flags."""
        state = self.adapters_state
        adapter_ids = {id(p) for name in state.configs for _, p in state.parameters_of(name)}
        body = [p for p in state.base_model.parameters() if id(p) not in adapter_ids]
        base_params = sum(p.numel() for p in body)
        active = set(state.active_setup.flatten()) if state.active_setup is not None else set()
        rows = []
        for name, config in state.configs.items():
            params = list(state.parameters_of(name))
            count = sum(p.numel() for _, p in params)
            rows.append(
                {
                    "name": name,
                    "architecture": config.architecture or "bottleneck",
                    "#param": count,
                    "%param": 100.0 * count / base_params,
                    "active": name in active,
                    "train": bool(params) and all(p.requires_grad for _, p in params),
                }
            )
        rows.append(
            {
                "name": "Full model",
                "architecture": "",
                "#param": base_params,
                "%param": 100.0,
                "active": "",
                "train": any(p.requires_grad for p in body),
            }
        )
        if as_dict:
            return rows
        header = f"{'Name':<20}{'Architecture':<16}{'#Param':>12}{'%Param':>10}{'Active':>8}{'Train':>7}"
        lines = ["=" * len(header), header, "-" * len(header)]
        for row in rows:
            lines.append(
                f"{row['name']:<20}{row['architecture']:<16}{row['#param']:>12,}{row['%param']:>10.3f}"
                f"{row['active']!s:>8}{row['train']!s:>7}"
            )
        lines.append("=" * len(header))
        return "\n".join(lines)
