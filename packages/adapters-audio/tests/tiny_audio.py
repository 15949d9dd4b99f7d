"""Tiny random speech encoders of every declared model type, in each layer order they come in."""

from __future__ import annotations

from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    SEWConfig,
    SEWModel,
    UniSpeechConfig,
    UniSpeechModel,
    UniSpeechSatConfig,
    UniSpeechSatModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)

# Two convolutions with kernel == stride (4, then 2) make one frame of every 8 samples: 56 samples
# are 7 frames. mask_time_prob=0 turns SpecAugment off: it draws its spans from numpy's global RNG,
# which the suite's torch seeds do not reach (two identical training passes would mask differently),
# and its default span of 10 frames is longer than these inputs. layerdrop=0: LayerDrop skips whole
# layers in training passes, and with two layers a seed that skips the one a check trains (its
# AdapterFusion, say) leaves nothing to learn; which seeds do depends on the release's order of random
# draws (transformers 5.18 skipped one where 5.24 does not). Dropout stays on.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    conv_dim=(16, 16),
    conv_stride=(4, 2),
    conv_kernel=(4, 2),
    num_conv_pos_embedding_groups=2,
    mask_time_prob=0.0,
    layerdrop=0.0,
)
SAMPLES_PER_FRAME = 8
# An even kernel, as in the published checkpoints (128): the model trims the extra padded frame.
POSITIONAL = dict(num_conv_pos_embeddings=4)
# The large checkpoints: stable-layer-norm (pre-LN) layers behind a LayerNorm feature encoder.
STABLE = dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)

FACTORIES = {
    "wav2vec2": lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY, **POSITIONAL)),
    "wav2vec2-stable": lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY, **POSITIONAL, **STABLE)),
    "hubert": lambda: HubertModel(HubertConfig(**TINY, **POSITIONAL)),
    "hubert-stable": lambda: HubertModel(HubertConfig(**TINY, **POSITIONAL, **STABLE)),
    "unispeech": lambda: UniSpeechModel(UniSpeechConfig(**TINY, **POSITIONAL)),
    "unispeech-stable": lambda: UniSpeechModel(UniSpeechConfig(**TINY, **POSITIONAL, **STABLE)),
    "unispeech-sat": lambda: UniSpeechSatModel(UniSpeechSatConfig(**TINY, **POSITIONAL)),
    "unispeech-sat-stable": lambda: UniSpeechSatModel(UniSpeechSatConfig(**TINY, **POSITIONAL, **STABLE)),
    # A stack of two positional convolutions with an odd kernel (the checkpoints: five of 19).
    "data2vec-audio": lambda: Data2VecAudioModel(
        Data2VecAudioConfig(**TINY, num_conv_pos_embeddings=2, conv_pos_kernel_size=3)
    ),
    # SEW pools the 7 frames to 3 before the layers (squeeze_factor 2) and upsamples after them.
    "sew": lambda: SEWModel(SEWConfig(**TINY, **POSITIONAL, squeeze_factor=2)),
}
