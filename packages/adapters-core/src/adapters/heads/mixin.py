"""The head API of AdapterModel classes: add, delete, activate, save and load named heads."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from ..composition import AdapterCompositionBlock, BatchSplit, Parallel, Stack, parse_composition
from ..errors import AdapterConfigError, AdapterNameError
from ..files.atomic import atomic_directory
from ..files.paths import named_child
from ..io import adapter_io, hub
from ..methods.base import AdapterDict
from ..model.model_mixin import ModelAdaptersMixin, _changes_adapters
from ..names import check_adapter_name
from . import io as head_io
from .base import PredictionHead
from .classification import (
    ClassificationHead,
    ImageClassificationHead,
    MultiLabelClassificationHead,
    MultipleChoiceHead,
    QuestionAnsweringHead,
    TaggingHead,
)
from .dependency_parsing import BiaffineParsingHead
from .language_modeling import CausalLMHead, MaskedLMHead, Seq2SeqLMHead
from .registry import BUILTIN_HEADS, CUSTOM_HEADS

logger = logging.getLogger(__name__)

HeadSetup = list[str] | BatchSplit


def heads_of_setup(setup: Any) -> HeadSetup | None:
    """The heads an adapter setup implies (the reference's rule): a Stack's last adapter; one head
    per child of a final Parallel; a BatchSplit of heads for a final BatchSplit."""
    block = parse_composition(setup)
    if block is None:
        return None
    final = block.children[-1] if isinstance(block, Stack) else block
    if isinstance(final, str):
        return [final]
    if isinstance(final, Parallel):
        return [c if isinstance(c, str) else c.last() for c in final.children]
    if isinstance(final, BatchSplit):
        return BatchSplit(
            *[c if isinstance(c, str) else c.last() for c in final.children], batch_sizes=final.batch_sizes
        )
    return None


def _accepts(head_class: type, argument: str) -> bool:
    parameters = inspect.signature(head_class.__init__).parameters
    return argument in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _supports(head_type: str) -> Callable:
    """Refuse ``add_*_head`` for head types the model family does not offer."""

    def decorator(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args: Any, **kwargs: Any) -> Any:
            self.require_head_type(head_type)
            return method(self, *args, **kwargs)

        return wrapper

    return decorator


class ModelWithFlexibleHeadsAdaptersMixin(ModelAdaptersMixin):
    """Named prediction heads on top of an adapter-capable model (``heads.<name>.*``).

    Model classes set ``head_types`` (the built-in head types their family supports) and call
    :meth:`init_heads` in ``__init__``; heads listed in ``config.prediction_heads`` are rebuilt there,
    so ``save_pretrained``/``from_pretrained`` keep them.

    Example:
        >>> from adapters import AutoAdapterModel
        >>> model = AutoAdapterModel.from_pretrained("bert-base-uncased")  # doctest: +SKIP
        >>> model.add_adapter("sst2", config="seq_bn")  # doctest: +SKIP
        >>> model.add_classification_head("sst2", num_labels=2)  # doctest: +SKIP
        >>> model.train_adapter("sst2")  # activates the adapter and its head  # doctest: +SKIP
    """

    head_types: tuple[str, ...] = ()
    use_pooler: bool = False

    # -- setup ----------------------------------------------------------------------------
    def init_heads(self) -> None:
        """Create the head container and rebuild the heads of ``config.prediction_heads``."""
        self.heads = AdapterDict()
        self.custom_heads: dict[str, type[PredictionHead]] = {}
        self._active_heads: HeadSetup = []
        self._tied_weights_keys = dict(type(self)._tied_weights_keys or {})
        saved = getattr(self.config, "prediction_heads", None) or {}
        self.config.prediction_heads = {}
        for name, head_config in saved.items():
            self.add_prediction_head_from_config(name, head_config, overwrite_ok=True)

    def require_head_type(self, head_type: str) -> None:
        if head_type not in self.head_types:
            raise AdapterConfigError(
                f"{type(self).__name__} (model_type {self.config.model_type!r}) does not support {head_type!r} heads; "
                f"it supports {list(self.head_types)}."
            )

    def build_head(self, head_name: str, config: dict[str, Any]) -> PredictionHead:
        """Build (not add) a head from its saved config: built-in types of this family or registered custom ones."""
        check_adapter_name(head_name, "head")
        config = copy.deepcopy(dict(config))
        head_type = config.pop("head_type", None)
        id2label = config.pop("id2label", None)
        label2id = config.pop("label2id", None)
        if id2label is None and label2id is not None:
            id2label = {int(i): label for label, i in label2id.items()}
        custom = self.custom_heads.get(head_type) or CUSTOM_HEADS.get(head_type)
        if head_type in BUILTIN_HEADS and head_type in self.head_types:
            head_class = BUILTIN_HEADS[head_type]
        elif custom is not None:
            head_class = custom
        else:
            raise AdapterConfigError(
                f"Unknown head type {head_type!r} for {type(self).__name__}: built-in types here are "
                f"{list(self.head_types)}; register a custom head type first (register_custom_head or "
                "adapters.heads.register_head)."
            )
        if id2label is not None and _accepts(head_class, "id2label"):  # LM heads have no labels
            config["id2label"] = {int(i): label for i, label in id2label.items()}
        head = head_class(self, head_name, **config)
        head.config.setdefault("head_type", head_type)
        return head

    # -- adding and removing --------------------------------------------------------------
    def add_prediction_head(self, head: PredictionHead, overwrite_ok: bool = False, set_active: bool = True) -> None:
        """Add a built head under ``head.name`` (and to ``config.prediction_heads``)."""
        name = check_adapter_name(head.name, "head")
        if name in self.heads and not overwrite_ok:
            raise AdapterNameError(
                f"A head named {name!r} exists already; pass overwrite_ok=True to replace it or choose another name."
            )
        if name in self.heads:
            self.delete_head(name)
        count = head.config.get("num_labels", head.config.get("num_choices"))
        if count is not None and "label2id" in head.config and head.config["label2id"] is None:
            head.config["label2id"] = {f"LABEL_{i}": i for i in range(count)}
        self.heads[name] = head
        self.config.prediction_heads[name] = head.config
        self._tie_head(name)
        if set_active:
            self.active_head = name

    def add_prediction_head_from_config(
        self, head_name: str, config: dict[str, Any], overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """Add a head from its config dict (``{"head_type": "classification", "num_labels": 3, ...}``)."""
        if head_name in self.heads and not overwrite_ok:
            raise AdapterNameError(f"A head named {head_name!r} exists already; pass overwrite_ok=True to replace it.")
        self.add_prediction_head(self.build_head(head_name, config), overwrite_ok=True, set_active=set_active)

    def register_custom_head(self, identifier: str, head: type[PredictionHead]) -> None:
        """Make a custom head class available to this model as head type ``identifier``."""
        self.custom_heads[identifier] = head

    def add_custom_head(
        self, head_type: str, head_name: str, overwrite_ok: bool = False, set_active: bool = True, **kwargs: Any
    ) -> None:
        """Add a head of a registered custom type: ``head_class(model, head_name, **kwargs)``."""
        head_class = self.custom_heads.get(head_type) or CUSTOM_HEADS.get(head_type)
        if head_class is None:
            raise AdapterConfigError(
                f"No custom head type {head_type!r} is registered; call register_custom_head({head_type!r}, cls) first."
            )
        head = head_class(self, head_name, **kwargs)
        head.config.setdefault("head_type", head_type)
        self.add_prediction_head(head, overwrite_ok, set_active=set_active)

    def delete_head(self, head_name: str) -> None:
        """Remove a head (nothing happens if there is none of that name, as in the reference library)."""
        if not isinstance(head_name, str) or head_name not in self.heads:
            logger.info("No prediction head %r to delete.", head_name)
            return
        del self.heads._modules[head_name]
        self.config.prediction_heads.pop(head_name, None)
        self._untie_head(head_name)
        if isinstance(self._active_heads, list) and head_name in self._active_heads:
            self._active_heads = [h for h in self._active_heads if h != head_name]
        elif isinstance(self._active_heads, BatchSplit) and head_name in self._active_heads.children:
            self._active_heads = []

    @_supports("classification")
    def add_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: dict | None = None,
        use_pooler: bool | None = None,
    ) -> None:
        """Sequence classification (``num_labels=1``: regression; ``multilabel=True``: binary per label)."""
        head_class = MultiLabelClassificationHead if multilabel else ClassificationHead
        pooler = self.use_pooler if use_pooler is None else use_pooler
        head = head_class(self, head_name, num_labels, layers, activation_function, id2label, pooler)
        self.add_prediction_head(head, overwrite_ok)

    @_supports("image_classification")
    def add_image_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: dict | None = None,
        use_pooler: bool | None = None,
    ) -> None:
        """Image classification (``multilabel=True``: binary per label)."""
        pooler = self.use_pooler if use_pooler is None else use_pooler
        head = ImageClassificationHead(
            self, head_name, num_labels, layers, activation_function, multilabel, id2label, pooler
        )
        self.add_prediction_head(head, overwrite_ok)

    @_supports("multiple_choice")
    def add_multiple_choice_head(
        self,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        overwrite_ok: bool = False,
        id2label: dict | None = None,
        use_pooler: bool | None = None,
    ) -> None:
        """Multiple choice over ``(batch, num_choices, length)`` inputs."""
        pooler = self.use_pooler if use_pooler is None else use_pooler
        head = MultipleChoiceHead(self, head_name, num_choices, layers, activation_function, id2label, pooler)
        self.add_prediction_head(head, overwrite_ok)

    @_supports("tagging")
    def add_tagging_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        overwrite_ok: bool = False,
        id2label: dict | None = None,
    ) -> None:
        """Token classification (NER, POS tagging)."""
        self.add_prediction_head(
            TaggingHead(self, head_name, num_labels, layers, activation_function, id2label), overwrite_ok
        )

    @_supports("question_answering")
    def add_qa_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        overwrite_ok: bool = False,
        id2label: dict | None = None,
    ) -> None:
        """Extractive question answering (start and end logits)."""
        head = QuestionAnsweringHead(self, head_name, num_labels, layers, activation_function, id2label)
        self.add_prediction_head(head, overwrite_ok)

    @_supports("dependency_parsing")
    def add_dependency_parsing_head(
        self, head_name: str, num_labels: int = 2, overwrite_ok: bool = False, id2label: dict | None = None
    ) -> None:
        """Biaffine dependency parsing (Glavaš & Vulić, 2021)."""
        self.add_prediction_head(BiaffineParsingHead(self, head_name, num_labels, id2label), overwrite_ok)

    @_supports("masked_lm")
    def add_masked_lm_head(
        self, head_name: str, activation_function: str | None = "gelu", layers: int = 2, overwrite_ok: bool = False
    ) -> None:
        """Masked language modeling; the projection is tied to the input embeddings (``tie_word_embeddings``)."""
        head = MaskedLMHead(self, head_name, layers=layers, activation_function=activation_function)
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    @_supports("causal_lm")
    def add_causal_lm_head(
        self, head_name: str, activation_function: str | None = "gelu", layers: int = 2, overwrite_ok: bool = False
    ) -> None:
        """Causal language modeling (labels shifted by one); tied like the masked LM head."""
        head = CausalLMHead(
            self, head_name, layers=layers, activation_function=activation_function, layer_norm=True, bias=True
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    @_supports("seq2seq_lm")
    def add_seq2seq_lm_head(self, head_name: str, layers: int = 1, overwrite_ok: bool = False) -> None:
        """The vocabulary projection of an encoder-decoder model."""
        self.add_prediction_head(Seq2SeqLMHead(self, head_name, layers=layers), overwrite_ok=overwrite_ok)

    # -- the active head ------------------------------------------------------------------
    @property
    def active_head(self) -> str | list[str] | BatchSplit | None:
        """The head(s) forward passes use: a name, a list of names (each gets the whole output), a
        BatchSplit of heads, or ``None``."""
        heads = self._active_heads
        if isinstance(heads, BatchSplit):
            return heads
        if not heads:
            return None
        return heads[0] if len(heads) == 1 else list(heads)

    @active_head.setter
    def active_head(self, setup: str | list[str] | AdapterCompositionBlock | None) -> None:
        if not setup:
            self._active_heads = []
            return
        heads: HeadSetup | None
        if isinstance(setup, AdapterCompositionBlock):
            heads = heads_of_setup(setup)  # a Stack's last name, a Parallel's heads, a BatchSplit of heads
        else:
            heads = [setup] if isinstance(setup, str) else list(setup)
        names: list[str] = list(heads.children) if isinstance(heads, BatchSplit) else list(heads or [])
        if not names:
            raise AdapterNameError(f"{setup!r} names no heads; give head names, a Parallel or a BatchSplit of heads.")
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise AdapterNameError(f"No head named {unknown}; heads of this model: {sorted(self.heads)}.")
        self._active_heads = heads
        if isinstance(heads, list) and len(heads) == 1:
            id2label = self.get_labels_dict(heads[0])
            if id2label is not None:
                self.config.id2label = id2label

    def get_labels_dict(self, head_name: str | None = None) -> dict[int, str] | None:
        """``{id: label}`` of a head (the active one by default)."""
        head_name = head_name or self.active_head
        if not isinstance(head_name, str):
            raise AdapterNameError("Give a head name: no single head is active.")
        label2id = self.heads[head_name].config.get("label2id")
        return {int(i): label for label, i in label2id.items()} if label2id else None

    def get_labels(self, head_name: str | None = None) -> list[str] | None:
        labels = self.get_labels_dict(head_name)
        return list(labels.values()) if labels is not None else None

    @_changes_adapters  # the heads switch with the adapters: no pass of another thread sees one without the other
    def set_active_adapters(self, adapter_setup: Any, skip_layers: list[int] | None = None) -> None:
        """Activate an adapter setup and, where they exist, the heads it implies (see :func:`heads_of_setup`)."""
        super().set_active_adapters(adapter_setup, skip_layers)
        self._activate_heads_of(self.active_adapters)

    @_changes_adapters
    def train_adapter(self, adapter_setup: Any, train_embeddings: bool = False) -> None:
        """As the base method, activating the setup's heads; an LM head's output projection (tied
        to the input embeddings) trains only with ``train_embeddings``."""
        super().train_adapter(adapter_setup, train_embeddings)
        self._activate_heads_of(self.active_adapters)
        for name in self._active_names():
            output = self.heads[name].get_output_embeddings()
            for param in output.parameters() if output is not None else ():
                param.requires_grad = train_embeddings

    def _activate_heads_of(self, setup: Any) -> None:
        heads = heads_of_setup(setup)
        names = list(heads.children) if isinstance(heads, BatchSplit) else heads
        if names and all(n in self.heads for n in names):
            self.active_head = heads

    # -- output embeddings (LM heads) ------------------------------------------------------
    def get_output_embeddings(self) -> nn.Module | list[nn.Module] | None:
        """The vocabulary projection of the active head(s), or ``None``."""
        names = self._active_names()
        found = [self.heads[n].get_output_embeddings() for n in names if n in self.heads]
        found = [e for e in found if e is not None]
        if not found:
            return None
        return found[0] if len(found) == 1 else found

    def set_output_embeddings(self, embeddings: nn.Module) -> None:
        for name in self._active_names():
            setter = getattr(self.heads[name], "set_output_embeddings", None)
            if setter is not None:
                setter(embeddings)

    def _active_names(self) -> list[str]:
        heads = self._active_heads
        return list(heads.children) if isinstance(heads, BatchSplit) else list(heads)

    def _ties(self, head: PredictionHead) -> str | None:
        """The key (relative to the head) of its projection weight if it is tied to the input embeddings."""
        output = head.get_output_embeddings()
        if output is None or not getattr(self.config, "tie_word_embeddings", False):
            return None
        embeddings = self.get_input_embeddings()
        if getattr(output, "weight", None) is None or output.weight.shape != embeddings.weight.shape:
            return None
        index = next(k for k, m in head._modules.items() if m is output)
        return f"{index}.weight"

    def tied_head_params(self, head_name: str, head: PredictionHead | None = None) -> set[str]:
        """Keys of ``head`` (by default the model's head ``head_name``) that are the input embeddings."""
        key = self._ties(head if head is not None else self.heads[head_name])
        return {key} if key else set()

    def _tie_head(self, name: str) -> None:
        # transformers ties, saves and loads tied weights through _tied_weights_keys / all_tied_weights_keys.
        key = self._ties(self.heads[name])
        if key is None:
            return
        embeddings = self.get_input_embeddings()
        index, param = key.split(".")
        setattr(self.heads[name]._modules[index], param, embeddings.weight)
        source = next(n for n, p in self.named_parameters(remove_duplicate=False) if p is embeddings.weight)
        self._tied_weights_keys[f"heads.{name}.{key}"] = source
        if getattr(self, "all_tied_weights_keys", None) is not None:
            self.all_tied_weights_keys[f"heads.{name}.{key}"] = source

    def _untie_head(self, name: str) -> None:
        prefix = f"heads.{name}."
        for mapping in (self._tied_weights_keys, getattr(self, "all_tied_weights_keys", None) or {}):
            for key in [k for k in mapping if k.startswith(prefix)]:
                del mapping[key]

    # -- saving and loading -----------------------------------------------------------------
    def save_head(
        self, save_directory: str | os.PathLike, head_name: str | None = None, use_safetensors: bool = True
    ) -> None:
        """Write ``head_config.json`` and the head's weights (the reference format), atomically."""
        head_name = head_name or self.active_head
        if not isinstance(head_name, str) or head_name not in self.heads:
            raise AdapterNameError(f"No head named {head_name!r}; heads of this model: {sorted(self.heads)}.")
        head_io.save_head(self, save_directory, head_name, use_safetensors)

    def load_head(
        self,
        save_directory: str | os.PathLike,
        load_as: str | None = None,
        id2label: dict | None = None,
        use_safetensors: bool | None = None,
        set_active: bool = True,
        **kwargs: Any,
    ) -> str:
        """Load a head saved by ``save_head`` (here or in the reference library); a static head
        (e.g. of a ``BertForSequenceClassification``) is converted. Returns the head's name."""
        name = load_as or kwargs.pop("main_load_name", None)
        if kwargs:
            raise TypeError(f"load_head() got unsupported arguments {sorted(kwargs)}.")
        prepared = head_io.prepare_head(self, save_directory, name, id2label, use_safetensors)
        self.add_prediction_head(prepared.head, overwrite_ok=True, set_active=set_active)
        return prepared.head.name

    def save_all_heads(self, save_directory: str | os.PathLike, use_safetensors: bool = True) -> None:
        """Save every head to ``save_directory/<name>`` (refusing a name or link that leads outside it)."""
        for name in self.heads:
            self.save_head(named_child(save_directory, name, "head"), name, use_safetensors)

    def save_adapter(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
        with_head: bool = True,
        format: str = "adapters",
    ) -> None:
        """Save an adapter and, with ``with_head`` (default), the head of the same name beside it.

        Both go into the folder in one whole-folder swap: a crash leaves the old pair or the new one.
        ``format="peft"`` writes the adapter alone as PEFT's LoRA folder (PEFT has no flexible heads).
        """
        if format != "adapters" or not (with_head and adapter_name in self.heads):
            super().save_adapter(
                save_directory, adapter_name, meta_dict, use_safetensors, with_head=False, format=format
            )
            return
        state = self.adapters_state
        state.require(adapter_name)
        with atomic_directory(save_directory, adapter_io.ADAPTER_FILES | head_io.HEAD_FILES) as scratch:
            adapter_io.write_adapter(state, scratch, adapter_name, meta_dict, use_safetensors)
            head_io.write_head(self, scratch, adapter_name, use_safetensors)

    def save_all_adapters(
        self, save_directory: str | os.PathLike, use_safetensors: bool = True, with_head: bool = True
    ) -> None:
        for name in self.adapters_state.configs:
            folder = named_child(save_directory, name)
            self.save_adapter(folder, name, use_safetensors=use_safetensors, with_head=with_head)

    def load_adapter(
        self,
        adapter_name_or_path: str | os.PathLike,
        config: Any = None,
        load_as: str | None = None,
        set_active: bool = False,
        use_safetensors: bool | None = None,
        overwrite_ok: bool = False,
        with_head: bool = True,
        id2label: dict | None = None,
        **kwargs: Any,
    ) -> str:
        """Load an adapter and, with ``with_head`` (default), the head saved beside it under the adapter's name.

        The head is checked and built before the adapter is added, so a bad head file leaves the
        model unchanged. ``num_labels=n`` stands for ``id2label`` with ``LABEL_i`` names.
        """
        num_labels = kwargs.pop("num_labels", None)
        if num_labels is not None and id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        hub_options = {key: kwargs.pop(key) for key in hub.HUB_OPTIONS if key in kwargs}
        if load_as:
            check_adapter_name(load_as)
        folder = hub.resolve_adapter_folder(adapter_name_or_path, **hub_options)
        prepared = None
        if with_head and head_io.has_head(folder):
            # Named after the adapter once that is loaded; a placeholder until then.
            prepared = head_io.prepare_head(self, folder, load_as or "loading", id2label, use_safetensors)
        name = super().load_adapter(
            folder, config, load_as, set_active, use_safetensors, overwrite_ok, with_head=False, **kwargs
        )
        if prepared is not None:
            prepared.head.name = name
            self.add_prediction_head(prepared.head, overwrite_ok=True, set_active=set_active)
        return name
