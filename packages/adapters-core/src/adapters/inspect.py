"""``python -m adapters.inspect MODEL_OR_CONFIG``: the spec ``adapters.init`` would use, as Python for a plugin.

MODEL_OR_CONFIG is a model type (``apertus``), a folder with a ``config.json`` or a Hub id. The
layout is read from a tiny random twin of the model (the same classes, two layers, small sizes), so
nothing is downloaded but the config and nothing large is built. The output is a ``ModelSpec(...)``
to paste into a plugin's ``specs.py`` (installed plugins' specs print as they are declared), then
three checks on the twin: the paths resolve, no active adapter leaves the outputs bit-identical, and
so do zero-initialised LoRA and bottleneck adapters.

Example:
    $ python -m adapters.inspect apertus
    # apertus: inferred (no installed plugin supports it): layers: layers (2 layers); ...
    ModelSpec(
        model_types=('apertus',),
        ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from .configs.bottleneck import SeqBnConfig
from .model.init import init
from .plugins.inference import infer_spec
from .plugins.manager import get_registry
from .plugins.spec import ModelSpec

# Config fields a tiny twin shrinks (where the config has them); everything else is kept.
_TINY_SIZES = {
    "num_hidden_layers": 2,
    "n_layer": 2,
    "hidden_size": 64,
    "n_embd": 64,
    "num_attention_heads": 4,
    "n_head": 4,
    "head_dim": 16,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "vocab_size": 128,
}


def tiny_config(config):
    """A copy of ``config`` with two layers and small sizes (grouped-query attention kept as 4:2)."""
    tiny = type(config).from_dict(config.to_dict())
    for field, value in _TINY_SIZES.items():
        if getattr(tiny, field, None) is not None:
            setattr(tiny, field, value)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads is not None:
        tiny.num_key_value_heads = 4 if kv_heads == getattr(config, "num_attention_heads", kv_heads) else 2
    for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tiny, field, None)
        if isinstance(value, int) and value >= tiny.vocab_size:
            setattr(tiny, field, None if field == "pad_token_id" else 1)
    if isinstance(getattr(tiny, "layer_types", None), list):
        tiny.layer_types = tiny.layer_types[: tiny.num_hidden_layers]
    return tiny


def spec_source(value: object, indent: int = 0) -> str:
    """``value`` (a ModelSpec and what it holds) as Python source, fields at their defaults left out."""
    pad = "    " * (indent + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = []
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            default = field.default if field.default is not dataclasses.MISSING else None
            if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = field.default_factory()  # type: ignore[misc]
            if field.name == "interface" or item == default:
                continue
            fields.append(f"{pad}{field.name}={spec_source(item, indent + 1)},")
        if not fields:
            return f"{type(value).__name__}()"
        if len(fields) <= 3 and sum(len(f) for f in fields) < 80:
            return f"{type(value).__name__}({', '.join(f.strip().rstrip(',') for f in fields)})"
        return f"{type(value).__name__}(\n" + "\n".join(fields) + "\n" + "    " * indent + ")"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{pad}{k!r}: {spec_source(v, indent + 1)}," for k, v in value.items()]
        return "{\n" + "\n".join(items) + "\n" + "    " * indent + "}"
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return "(" + ", ".join(spec_source(v, indent) for v in value) + ",)"
    return repr(value)


def _same_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], plain: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(model(**inputs).last_hidden_state, plain)


def checks(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Run the three checks on ``model`` (the tiny twin) adapted with ``spec``; one line each."""
    vocab = model.config.vocab_size
    ids = torch.arange(6).remainder(vocab).unsqueeze(0)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model.eval()
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
    init(model, spec=spec)
    lines = ["paths: every module the spec names exists"]
    model.add_adapter("lora", config="lora")
    model.add_adapter("bn", config=SeqBnConfig(init_weights="mam_adapter"))
    same = _same_outputs(model, inputs, plain)
    lines.append(f"no active adapter: {'identical outputs' if same else 'OUTPUTS DIFFER'}")
    results = []
    for name in ("lora", "bn"):
        model.set_active_adapters(name)
        results.append(f"{name} {'identical' if _same_outputs(model, inputs, plain) else 'DIFFERS'}")
    lines.append("zero-initialised adapters: " + ", ".join(results))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model type (apertus), a folder with config.json, or a Hub id")
    args = parser.parse_args(argv)
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if args.model in CONFIG_MAPPING:
        config = AutoConfig.for_model(args.model)
    else:
        config = AutoConfig.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(config))
    registry = get_registry()
    if config.model_type in registry.model_specs:
        spec = registry.spec_for(config.model_type).for_model(model)
        origin = f"declared by the installed plugin {registry.spec_owners[config.model_type]!r}"
    else:
        inferred = infer_spec(model)
        spec = inferred.spec
        origin = f"inferred (no installed plugin supports it): {inferred.describe()}"
    print(f"# {config.model_type}: {origin}")
    print("from adapters.plugins import FusedLinear, InputOf, ModelSpec, OutputOf, ResidualBlock, SelfAttention\n")
    print(f"SPEC = {spec_source(spec)}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in checks(model, spec):
            print(f"# check: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
