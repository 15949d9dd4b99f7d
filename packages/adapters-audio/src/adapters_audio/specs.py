"""Where adapters attach in the wav2vec 2.0 family of speech encoders (transformers 5.x).

wav2vec 2.0, HuBERT, Data2Vec-Audio, UniSpeech, UniSpeech-SAT and SEW share one encoder layer
(transformers copies it from wav2vec 2.0): ``attention`` (q/k/v/out projections, computed through
transformers' attention interface, where prefix tuning adds its keys and values), a ``dropout``,
the residual addition, and ``feed_forward`` (``intermediate_dense`` and ``output_dense``, the
latter followed by the sub-module's own dropout), under ``encoder.layers``. The layer comes in two
orders, chosen per checkpoint by ``config.do_stable_layer_norm``:

* post-LN (the base checkpoints): ``x = layer_norm(x + dropout(attention(x)))``, then
  ``x = final_layer_norm(x + feed_forward(x))``. ``x`` of each block is the input of its
  sub-layer (``attention``, ``feed_forward``), ``h`` leaves ``dropout`` and ``feed_forward``, and
  the block ends in its LayerNorm, as BERT's blocks do;
* pre-LN, "stable layer norm" (the large checkpoints): ``x = x + dropout(attention(layer_norm(x)))``,
  then ``x = x + feed_forward(final_layer_norm(x))``. ``x`` is read where it enters the LayerNorm
  that opens the block, and ``h`` from the same modules. The two LayerNorms keep their names but
  swap roles, so one set of paths cannot describe both orders: ``specialize`` picks the layout from
  the checkpoint's config. Data2Vec-Audio and SEW exist in the post-LN order only.

The model takes no token ids. A convolutional feature encoder turns the waveform into frames,
``feature_projection`` widens them, and the encoder adds a convolutional positional embedding
computed from the frames themselves, then (post-LN) a LayerNorm and (both) ``encoder.dropout``.
That dropout's output is what the first layer reads in every variant (SEW pools the frames before
it): the counterpart of BERT's embedding output, where invertible adapters act. No head of these
models is an output embedding (the CTC head is not tied to anything), so nothing is inverted.

Padding: the base model's ``attention_mask`` counts waveform samples; its forward derives a frame
mask from it (``_get_feature_vector_attention_mask``), which enters ``encoder``. That is the
sequence the layers see, so it is the spec's padding mask.

There is no reference-library support for these models, so weight keys are the transformers 5
module paths. WavLM is not declared: its attention hands the q/k/v weights to
``F.multi_head_attention_forward`` instead of calling the projection modules, so LoRA's hooks on
them would never run.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from adapters.plugins import InputOf, ModelSpec, ResidualBlock, SelfAttention

_LINEARS = {
    "q": "attention.q_proj",
    "k": "attention.k_proj",
    "v": "attention.v_proj",
    "attn_out": "attention.out_proj",
    "ffn_in": "feed_forward.intermediate_dense",
    "ffn_out": "feed_forward.output_dense",
}

POST_LN_BLOCKS = {
    "attention_block": ResidualBlock(
        holder="attention_adapters",
        residual=InputOf("attention", 0, "hidden_states"),
        sublayer="dropout",
        layer_norm="layer_norm",
    ),
    "ffn_block": ResidualBlock(
        holder="output_adapters",
        residual=InputOf("feed_forward", 0, "hidden_states"),
        sublayer="feed_forward",
        layer_norm="final_layer_norm",
    ),
}

PRE_LN_BLOCKS = {
    "attention_block": ResidualBlock(
        holder="attention_adapters", residual=InputOf("layer_norm", 0, "input"), sublayer="dropout"
    ),
    "ffn_block": ResidualBlock(
        holder="output_adapters", residual=InputOf("final_layer_norm", 0, "input"), sublayer="feed_forward"
    ),
}

# Shared by every declared model type; the two refusals follow from the audio front end, not from
# one architecture.
REFUSED = {
    "prompt_tuning": "speech encoders read a waveform through a convolutional feature encoder and add a "
    "convolutional positional embedding computed from the frames inside the encoder's forward: there are no "
    "token embeddings where a prompt could enter, and the padding mask the model takes counts waveform samples, "
    "not frames, so it cannot be extended for prompt positions (the reference library has no prompt tuning for "
    "speech models either). Use prefix tuning, which adds keys/values to every attention instead",
    "reft": "ReFT intervenes at the first and last real positions of each sequence, found from the attention mask "
    "the model is called with; for speech encoders that mask counts waveform samples, while the layers see the "
    "frames the feature encoder makes of them (the model converts the mask inside its forward), so a padded batch "
    "cannot be intervened on at the right frames. The edge frames of an utterance are mostly silence, not the "
    "summary positions ReFT relies on in text, and the reference library has no ReFT for speech models. Use LoRA, "
    "bottleneck adapters or prefix tuning",
}


def _spec(model_types: tuple[str, ...], blocks: dict, **fields: object) -> ModelSpec:
    return ModelSpec(
        model_types=model_types,
        layers="encoder.layers",
        **blocks,
        linears=_LINEARS,
        self_attention=SelfAttention("attention"),
        embeddings="encoder.dropout",
        padding_mask=InputOf("encoder", 1, "attention_mask"),
        refused_methods=REFUSED,
        **fields,
    )


def _for_layer_norm_order(spec: ModelSpec, base_model: nn.Module) -> ModelSpec:
    """The layout of one checkpoint: pre-LN blocks where ``do_stable_layer_norm`` built the stable encoder."""
    if getattr(base_model.config, "do_stable_layer_norm", False):
        return dataclasses.replace(spec, **PRE_LN_BLOCKS, specialize=None)
    return dataclasses.replace(spec, specialize=None)


# Families whose config can build either encoder (``Wav2Vec2EncoderStableLayerNorm`` and its copies).
WAV2VEC2_LIKE = _spec(
    ("wav2vec2", "hubert", "unispeech", "unispeech-sat"), POST_LN_BLOCKS, specialize=_for_layer_norm_order
)
# Post-LN only: their configs have no do_stable_layer_norm and their models one encoder class.
POST_LN_ONLY = _spec(("data2vec-audio", "sew"), POST_LN_BLOCKS)

SPECS = (WAV2VEC2_LIKE, POST_LN_ONLY)
