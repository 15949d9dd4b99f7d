"""Infer where adapters attach in a model no plugin supports: its module names and one probe pass.

Most transformer layers follow a few layouts under a handful of names: an attention module
(``self_attn``, ``attention``, ...) with q/k/v (or one fused) and output projections, a feed-forward
module (``mlp``, ``feed_forward``, ...) with an input and an output projection, and norms. Names
alone do not say how the residual stream flows (``post_attention_layernorm`` is the FFN's pre-norm
in Llama and the attention's post-norm in OLMo 2), so :func:`infer_spec` runs the model's
embeddings and first layer once on four tokens, with hooks on the layer's children, and reads the
flow off the tensors: which norm feeds the attention, whether the feed-forward reads the same norm
(a parallel block), whether a norm follows a sub-layer. Layouts it recognises:

- pre-norm blocks, ``x + sublayer(norm(x))`` (Llama and its many relatives, StarCoder2, GPT-NeoX);
- parallel blocks, ``x + attn(norm(x)) + mlp(norm(x))`` (Cohere, Falcon), or with two norms;
- post-sub-layer norms, ``x + norm(sublayer(x))`` (OLMo 2, EXAONE 4).

Bottleneck adapters then act on what each block adds to the stream, LoRA on the projections it found
(``ffn_in``: the up projection, ``ffn_out``: the down projection), ReFT on layer outputs, prefix
tuning where the attention calls transformers' attention interface. Anything else is refused with
the reason; :class:`InferredSpec` says what was inferred, and ``python -m adapters.inspect`` prints
it as a ModelSpec to start a plugin from.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .spec import FusedLinear, InputOf, ModelSpec, ResidualBlock, SelfAttention

ATTENTION_NAMES = ("self_attn", "attention", "self_attention", "attn")
FFN_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
PROJECTION_NAMES = {
    "q": ("q_proj", "query", "q"),
    "k": ("k_proj", "key", "k"),
    "v": ("v_proj", "value", "v"),
    "attn_out": ("o_proj", "out_proj", "dense", "c_proj", "Wo", "proj"),
    "ffn_in": ("up_proj", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "w1", "Wi"),
    "ffn_out": ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "w2", "Wo"),
    "ffn_gate": ("gate_proj",),
}
FUSED_QKV_NAMES = ("qkv_proj", "query_key_value", "Wqkv", "c_attn", "qkv", "W_pack")
# Holders as the reference library names them for decoder layers (layers.0.attention_adapters...).
ATTENTION_HOLDER, FFN_HOLDER = "attention_adapters", "output_adapters"
PROBE_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class InferredSpec:
    """A spec inferred from a model, and one line per decision, for the warning and ``adapters.inspect``."""

    spec: ModelSpec
    decisions: tuple[str, ...]

    def describe(self) -> str:
        return "; ".join(self.decisions)


class _Stop(Exception):
    """Ends the probe pass after the first layer."""


def infer_spec(model: nn.Module) -> InferredSpec:
    """The spec of ``model`` (a transformers model, with or without a head) inferred from its layout.

    Raises:
        UnsupportedModelError: no known layout fits; the message says what was looked for.

    Example:
        >>> inferred = infer_spec(model)  # doctest: +SKIP
        >>> inferred.spec.layers, inferred.describe()  # doctest: +SKIP
        ('layers', 'layers: layers (2 layers); attention block: pre-norm ...')
    """
    base = getattr(model, "base_model", model)
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    decisions: list[str] = []
    layers_path, layers = _layer_list(base, model_type)
    decisions.append(f"layers: {layers_path} ({len(layers)} layers)")
    layer = layers[0]
    attention_name = _child(layer, ATTENTION_NAMES)
    ffn_name = _child(layer, FFN_NAMES)
    if attention_name is None or ffn_name is None:
        raise UnsupportedModelError(
            f"Cannot infer where adapters attach in {model_type!r}: its layer ({type(layer).__name__}) has no "
            f"attention module named one of {ATTENTION_NAMES} and feed-forward module named one of {FFN_NAMES} "
            f"(it has: {', '.join(layer._modules)}). Describe it with adapters.init(model, "
            "interface=AdapterModelInterface(...)) or spec=ModelSpec(...)."
        )
    flow = _probe(base, layer, model_type)
    attention_block, attention_note = _block(layer, flow, attention_name, ATTENTION_HOLDER, None)
    ffn_block, ffn_note = _block(layer, flow, ffn_name, FFN_HOLDER, attention_block)
    decisions += [f"attention block: {attention_note}", f"FFN block: {ffn_note}"]
    attention = layer.get_submodule(attention_name)
    linears, fused, linear_note = _projections(layer, attention_name, ffn_name, base.config)
    decisions.append(f"LoRA: {linear_note}")
    refused: dict[str, str] = {
        "prompt_tuning": "an inferred layout does not say where a prompt may enter the model; declare a ModelSpec "
        "(python -m adapters.inspect prints this one to start from) with the embeddings it should extend"
    }
    self_attention = None
    if _calls_attention_interface(attention):
        self_attention = SelfAttention(attention_name)
        decisions.append(f"prefix tuning: at {attention_name} (it calls transformers' attention interface)")
    else:
        refused["prefix_tuning"] = (
            f"{type(attention).__name__} computes attention itself, not through transformers' attention "
            "interface, so an inferred layout cannot add prefix keys and values; declare KVProjections in a ModelSpec"
        )
        decisions.append("prefix tuning: refused (the attention does not call transformers' attention interface)")
    embeddings = _path_of(base, base.get_input_embeddings()) if hasattr(base, "get_input_embeddings") else None
    decisions.append(f"embeddings: {embeddings}")
    spec = ModelSpec(
        model_types=(model_type,),
        layers=layers_path,
        embeddings=embeddings,
        attention_block=attention_block,
        ffn_block=ffn_block,
        linears=linears,
        fused_linears=fused,
        self_attention=self_attention,
        padding_mask=InputOf("", 1, "attention_mask") if _takes(base, "attention_mask") else None,
        refused_methods=refused,
    )
    return InferredSpec(spec, tuple(decisions))


# -- the module tree ----------------------------------------------------------------------------------
def _layer_list(base: nn.Module, model_type: str) -> tuple[str, nn.ModuleList]:
    """The longest ModuleList of one layer class (the depth the config names, where it names one)."""
    depth = next(
        (getattr(base.config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(base.config, k)),
        None,
    )
    found = [
        (path, module)
        for path, module in base.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1
    ]
    fitting = [(p, m) for p, m in found if depth is None or len(m) == depth]
    if not fitting:
        raise UnsupportedModelError(
            f"Cannot infer where adapters attach in {model_type!r}: no list of {depth} identical layers in "
            f"{type(base).__name__}. Describe it with adapters.init(model, interface=AdapterModelInterface(...))."
        )
    return min(fitting, key=lambda item: (item[0].count("."), -len(item[1])))


def _child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if isinstance(module._modules.get(name), nn.Module)), None)


def _path_of(root: nn.Module, target: nn.Module | None) -> str | None:
    return next((path for path, module in root.named_modules() if module is target), None)


def _takes(module: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _is_linear(module: nn.Module | None) -> bool:
    # transformers' Conv1D (GPT-2 style, weight stored (in, out)) is a linear layer too.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _equal_thirds(linear: nn.Module) -> bool:
    """Whether a fused projection's output is q, k and v of the input's width each (no grouped or multi-query
    key/value heads), the layout LoRA's three equal slices assume."""
    # transformers' Conv1D stores its weight (in, out); nn.Linear (out, in).
    out_features, in_features = linear.weight.shape[::-1] if type(linear).__name__ == "Conv1D" else linear.weight.shape
    return out_features == 3 * in_features


def _calls_attention_interface(attention: nn.Module) -> bool:
    try:
        source = inspect.getsource(type(attention).forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source or "eager_attention_forward" in source


# -- the probe pass -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Flow:
    """The first layer's input and, per direct child, the first tensor it received and returned."""

    x: torch.Tensor | None = None
    inputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def same(self, a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
        return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)

    def find(self, names: list[str], where: str, tensor: torch.Tensor | None) -> str | None:
        """The name whose ``where`` ("inputs"/"outputs") tensor is ``tensor``: the same object first (fresh
        norms compute equal values), then equal values (a reshape or dropout in between)."""
        recorded = getattr(self, where)
        same_object = next((n for n in names if recorded[n] is tensor), None)
        return same_object or next((n for n in names if self.same(recorded[n], tensor)), None)

    def norms(self, layer: nn.Module) -> list[str]:
        return [name for name in self.outputs if "norm" in type(layer._modules[name]).__name__.lower()]


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _probe(base: nn.Module, layer: nn.Module, model_type: str) -> _Flow:
    flow = _Flow()
    handles = []

    def layer_input(module, args, kwargs):
        flow.x = _first_tensor(args) if args else kwargs.get("hidden_states")

    def record(name):
        def hook(module, args, kwargs, output):
            if name not in flow.outputs:
                flow.inputs[name] = _first_tensor(args) if args else _first_tensor(next(iter(kwargs.values()), None))
                flow.outputs[name] = _first_tensor(output)

        return hook

    def stop(module, args, output):
        raise _Stop

    handles.append(layer.register_forward_pre_hook(layer_input, with_kwargs=True))
    for name, child in layer._modules.items():
        if child is not None:
            handles.append(child.register_forward_hook(record(name), with_kwargs=True))
    handles.append(layer.register_forward_hook(stop))
    vocab = getattr(base.config, "vocab_size", None) or 2
    ids = torch.arange(PROBE_TOKENS).remainder(vocab).unsqueeze(0)
    device = next(base.parameters()).device
    was_training = base.training
    try:
        base.eval()
        with torch.no_grad():
            base(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device))
    except _Stop:
        pass
    except Exception as error:
        raise UnsupportedModelError(
            f"Cannot infer where adapters attach in {model_type!r}: a probe pass of four tokens through its first "
            f"layer failed ({type(error).__name__}: {error}). Describe it with adapters.init(model, "
            "interface=AdapterModelInterface(...)) or spec=ModelSpec(...)."
        ) from error
    finally:
        base.train(was_training)
        for handle in handles:
            handle.remove()
    if flow.x is None:
        raise UnsupportedModelError(f"Cannot infer where adapters attach in {model_type!r}: its first layer never ran.")
    return flow


def _block(
    layer: nn.Module, flow: _Flow, sublayer: str, holder: str, attention_block: ResidualBlock | None
) -> tuple[ResidualBlock, str]:
    """The residual block around ``sublayer`` as the probe saw the tensors flow."""
    norms = flow.norms(layer)
    sub_in, sub_out = flow.inputs.get(sublayer), flow.outputs.get(sublayer)
    if sub_in is None or sub_out is None:
        raise UnsupportedModelError(f"The probe pass never called {sublayer!r} with a tensor; cannot infer its block.")
    pre_norm = flow.find(norms, "outputs", sub_in)
    # A norm applied to the sub-layer's output before the addition (OLMo 2: x + norm(attn(x))).
    post_norm = flow.find(norms, "inputs", sub_out)
    closing = post_norm or sublayer
    computed = f"{post_norm}({sublayer}(x))" if post_norm else f"{sublayer}(x)"
    if pre_norm is not None:
        parallel = attention_block is not None and InputOf(pre_norm) == _first_source(attention_block)
        note = f"pre-norm, x + {computed.replace('(x)', f'({pre_norm}(x))')}" + (
            " (parallel to the attention)" if parallel else ""
        )
        return ResidualBlock(holder=holder, residual=InputOf(pre_norm), sublayer=closing), note
    if flow.same(sub_in, flow.x) or attention_block is not None:
        # The sub-layer reads the stream itself.
        note = f"x + {computed}"
        return ResidualBlock(holder=holder, residual=InputOf(sublayer), sublayer=closing), note
    raise UnsupportedModelError(f"The input of {sublayer!r} is neither the layer input nor a norm's output.")


def _first_source(block: ResidualBlock):
    return block.residual[0] if isinstance(block.residual, tuple) else block.residual


def _projections(layer: nn.Module, attention: str, ffn: str, config) -> tuple[dict, tuple, str]:
    linears: dict[str, str] = {}
    notes: list[str] = []
    attention_module, ffn_module = layer.get_submodule(attention), layer.get_submodule(ffn)
    for role in ("q", "k", "v", "attn_out"):
        name = next((n for n in PROJECTION_NAMES[role] if _is_linear(attention_module._modules.get(n))), None)
        if name is not None:
            linears[role] = f"{attention}.{name}"
    fused: tuple[FusedLinear, ...] = ()
    if not {"q", "k", "v"} <= set(linears):
        for role in ("q", "k", "v"):
            linears.pop(role, None)
        name = next((n for n in FUSED_QKV_NAMES if _is_linear(attention_module._modules.get(n))), None)
        if name is not None and _equal_thirds(attention_module._modules[name]):
            fused = (FusedLinear(f"{attention}.{name}"),)
            notes.append(f"q/k/v as thirds of {attention}.{name}")
        elif name is not None:
            notes.append(f"no q/k/v LoRA ({attention}.{name} fuses q, k and v of unequal sizes)")
        else:
            notes.append("no q/k/v LoRA (no projections found)")
    for role in ("ffn_in", "ffn_out"):
        name = next((n for n in PROJECTION_NAMES[role] if _is_linear(ffn_module._modules.get(n))), None)
        if name is not None:
            linears[role] = f"{ffn}.{name}"
    gate = ffn_module._modules.get(PROJECTION_NAMES["ffn_gate"][0])
    if "ffn_in" in linears and _is_linear(gate):
        linears["ffn_gate"] = f"{ffn}.{PROJECTION_NAMES['ffn_gate'][0]}"
    if "ffn_in" not in linears or "ffn_out" not in linears:
        linears.pop("ffn_in", None)
        linears.pop("ffn_out", None)
        linears.pop("ffn_gate", None)
        notes.append(f"no FFN LoRA ({ffn} has no input and output linear layers, e.g. mixture-of-experts)")
    placed = ", ".join(f"{role}={path}" for role, path in linears.items())
    return linears, fused, "; ".join(filter(None, [placed, *notes]))
