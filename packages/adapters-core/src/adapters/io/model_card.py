"""The model card (``README.md``) uploaded with an adapter by ``push_adapter_to_hub``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..files.paths import is_hub_id

if TYPE_CHECKING:
    from ..model.model_mixin import ModelAdaptersMixin

PLACEHOLDER = "<!-- Add some description here -->"


def adapter_card(
    model: ModelAdaptersMixin,
    adapter_name: str,
    repo_id: str,
    datasets_tag: str | None = None,
    tags: Sequence[str] | None = None,
    language: str | Sequence[str] | None = None,
    license: str | None = None,
    metrics: Sequence[str] | Mapping[str, float] | None = None,
    architecture_training: str | None = None,
    results: str | None = None,
    citation: str | None = None,
) -> str:
    """Card text: YAML metadata (library ``adapters``, base model, tags, datasets, metrics) and a usage section.

    ``metrics`` is a list of metric names, or a name-to-value mapping whose values also fill the
    results section (unless ``results`` is given).

    Example:
        >>> print(adapter_card(model, "sst2", "me/bert-sst2", metrics={"accuracy": 0.91}))  # doctest: +SKIP
        ---
        base_model: google-bert/bert-base-uncased
        library_name: adapters
        ...
    """
    from huggingface_hub import ModelCardData

    state = model.adapters_state
    config = state.require(adapter_name)
    methods = list(dict.fromkeys(method.name for method, _ in state.methods_of(config)))
    base = getattr(model.config, "_name_or_path", "") or ""
    metric_names = list(metrics) if metrics is not None else []
    # "adapter-transformers" is the Hub's library key for AdapterHub adapters (its filters and widgets).
    all_tags = ["adapters", "adapter-transformers", model.config.model_type, *methods, *(tags or [])]
    data = ModelCardData(
        library_name="adapters",
        # Only a Hub id is valid base_model metadata; a local path is named in the text only.
        base_model=base if is_hub_id(base) and not os.path.exists(base) else None,
        tags=list(dict.fromkeys(all_tags)),
        datasets=[datasets_tag] if datasets_tag else None,
        language=language,
        license=license,
        metrics=metric_names or None,
    )
    config_json = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    n_params = sum(p.numel() for _, p in state.parameters_of(adapter_name))
    model_class = state.model_class_name
    trained_on = f" trained on [{datasets_tag}](https://huggingface.co/datasets/{datasets_tag})" if datasets_tag else ""
    if results is None and isinstance(metrics, Mapping) and metrics:
        results = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    sections = [
        f"---\n{data.to_yaml()}\n---",
        f"# Adapter `{adapter_name}` for `{base or model_class}`",
        f"A {' + '.join(methods)} adapter ({type(config).__name__}) for `{base or model_class}`{trained_on}, "
        "saved in the AdapterHub format: it loads with the `adapters` library.",
        "## Usage",
        "```python\n"
        "import adapters\n"
        f"from transformers import {model_class}\n\n"
        f'model = {model_class}.from_pretrained("{base or "<base model>"}")\n'
        "adapters.init(model)\n"
        f'name = model.load_adapter("{repo_id}", set_active=True)\n'
        "```",
        "## Architecture & Training",
        f"{n_params:,} adapter parameters. Config:\n\n```json\n{config_json}\n```"
        + (f"\n\n{architecture_training}" if architecture_training else ""),
        "## Evaluation results",
        results or PLACEHOLDER,
    ]
    if citation:
        sections += ["## Citation", citation]
    return "\n\n".join(sections) + "\n"
