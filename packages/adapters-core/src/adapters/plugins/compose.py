"""Specs of models made of other models (``EncoderDecoderModel``): built from the sub-models' own specs.

An ``EncoderDecoderModel`` holds two complete transformers models (a BERT encoder and a BERT or
GPT-2 decoder), whose model types are known only from the checkpoint's config. Its plugin gives a
template :class:`ModelSpec` with ``specialize=SubModels(...)``; at ``adapters.init`` the core asks
the registry for each sub-model's spec (through whatever plugin provides it), views it for that
sub-model (:meth:`ModelSpec.for_model`: a BERT decoder's cross-attention) and joins them:

* each sub-model's layer stacks become stacks of the joined spec, under the sub-model's body path
  (``decoder.bert.encoder.layer``), carrying every per-layer field of their own spec as overrides;
* model-level places (embeddings, prompt embeddings, padding mask) come from one sub-model (the
  encoder), their paths prefixed;
* refused methods are those of every part, plus the template's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from ..errors import UnsupportedModelError
from .manager import get_registry
from .spec import LAYER_FIELDS, InputOf, LayerStack, ModelSpec, ReferenceNames


def _under(prefix: str, path: str | None) -> str | None:
    if path is None:
        return None
    return f"{prefix}.{path}" if path else prefix


@dataclasses.dataclass(frozen=True)
class SubModels:
    """``ModelSpec.specialize`` for a model whose layers live in complete sub-models.

    Example (EncoderDecoderModel: ``model.encoder``, ``model.decoder``, their configs at
    ``config.encoder`` and ``config.decoder``):
        >>> from adapters.plugins import InputOf, ModelSpec
        >>> spec = ModelSpec(
        ...     model_types=("encoder-decoder",), layers="-",
        ...     specialize=SubModels(("encoder", "decoder"),
        ...                          padding_masks=(InputOf("decoder", 3, "encoder_attention_mask"),)))

    Attributes:
        paths: module paths of the sub-models in the base model, in layer-numbering order; each is
            also the attribute of the model config that holds the sub-model's config.
        model_fields_from: the sub-model whose embeddings and padding mask are the model's.
        padding_masks: further places where that padding mask enters (the decoder's cross-attention).
        prefix_keys: sub-model path to the prefix-tuning key of its self-attention, where two
            sub-models would share one (a BERT encoder's and a BERT decoder's are both
            ``self_prefix``; each needs its own prefixes, so the encoder's becomes ``encoder_prefix``).
    """

    paths: tuple[str, ...]
    model_fields_from: str = "encoder"
    padding_masks: tuple[InputOf, ...] = ()
    prefix_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.paths, self.model_fields_from, self.padding_masks, tuple(sorted(self.prefix_keys.items()))))

    def __call__(self, template: ModelSpec, base_model: nn.Module) -> ModelSpec:
        stacks: list[LayerStack] = []
        refused = dict(template.refused_methods)
        model_fields: dict[str, object] = {}
        for path in self.paths:
            sub_model = base_model.get_submodule(path)
            body = getattr(sub_model, "base_model", sub_model)
            body_path = path if body is sub_model else f"{path}.{sub_model.base_model_prefix}"
            sub_spec = get_registry().spec_for(sub_model.config.model_type).for_model(body)
            self._check_supported(sub_spec, sub_model)
            for stack in sub_spec.stacks:
                view = sub_spec.for_stack(stack)
                overrides = {field: getattr(view, field) for field in LAYER_FIELDS}
                if path in self.prefix_keys and view.self_attention is not None:
                    overrides["self_attention"] = dataclasses.replace(
                        view.self_attention, prefix_key=self.prefix_keys[path]
                    )
                stacks.append(LayerStack(f"{body_path}.{stack.path}", config=path, overrides=overrides, entry=path))
            for method, reason in sub_spec.refused_methods.items():
                refused.setdefault(method, f"(in the {path}) {reason}")
            if path == self.model_fields_from:
                model_fields = self._model_fields(sub_spec, body_path)
        # The template's own per-layer fields are placeholders: every stack brings its own.
        return dataclasses.replace(
            template,
            layers="",
            layer_stacks=tuple(stacks),
            refused_methods=refused,
            specialize=None,
            **model_fields,
        )

    def _model_fields(self, sub_spec: ModelSpec, body_path: str) -> dict[str, object]:
        masks = tuple(
            InputOf(_under(body_path, where.path), where.index, where.keyword) for where in sub_spec.padding_masks
        )
        return {
            "embeddings": _under(body_path, sub_spec.embeddings),
            "prompt_embeddings": _under(body_path, sub_spec.prompt_embeddings),
            "padding_mask": (masks + self.padding_masks) or None,
            "prompt_token_slots": sub_spec.prompt_token_slots,
        }

    @staticmethod
    def _check_supported(sub_spec: ModelSpec, sub_model: nn.Module) -> None:
        # Layouts that depend on the sub-model's own root (its own layer iterator, sub-configs,
        # renamed reference keys) would need their paths re-rooted too; no supported sub-model has them.
        names = sub_spec.reference_names
        if (
            sub_spec.iter_layers is not None
            or any(stack.config for stack in sub_spec.stacks)
            or (names is not None and names != ReferenceNames())
        ):
            raise UnsupportedModelError(
                f"{type(sub_model).__name__} ({sub_model.config.model_type}) cannot be a part of a composed model: "
                "its spec iterates its layers itself, has sub-configs or renames reference weight keys."
            )
