"""What the core detects instead of asking for a transformers release (so plugins need no version branches).

Each case is built from plain modules or tensors, so it runs the same on every transformers 5.x:
attention in a module's own ``_attn`` method (GPT-J before transformers moved it onto the attention
interface), a module that bypasses the interface (refused, not silently left without its prefix),
prompt positions of left-padded rows whatever filler the padding positions carry, and the patterns
of transformers' weight conversions under either attribute name.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adapters.core.attention import AttentionPrefixHooks
from adapters.errors import AdapterError
from adapters.heads.model import _source_patterns
from adapters.methods.prompt_tuning.slots import positions_with_prompt
from adapters.plugins.spec import SelfAttention
from adapters.testing import assert_close

HEADS, DIM, N = 2, 4, 3


class _OwnMethodAttention(nn.Module):
    """Attends in ``_attn(query, key, value, attention_mask)``, as GPT-J did and GPT-Neo does."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="eager")
        self.is_causal = False
        self.qkv = nn.Linear(HEADS * DIM, 3 * HEADS * DIM, bias=False)

    def _attn(self, query, key, value, attention_mask=None):
        scores = query @ key.transpose(-1, -2)
        if attention_mask is not None:
            scores = scores + attention_mask
        return scores.softmax(-1) @ value, None

    def forward(self, hidden_states, attention_mask=None):
        batch, length, _ = hidden_states.shape
        q, k, v = (t.view(batch, length, HEADS, DIM).transpose(1, 2) for t in self.qkv(hidden_states).chunk(3, -1))
        return self._attn(q, k, v, attention_mask)[0]


class _BypassingAttention(nn.Module):
    """Has a config but computes attention inline: transformers' attention interface is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="eager")
        self.qkv = nn.Linear(HEADS * DIM, 3 * HEADS * DIM, bias=False)

    def forward(self, hidden_states, attention_mask=None):
        batch, length, _ = hidden_states.shape
        q, k, v = (t.view(batch, length, HEADS, DIM).transpose(1, 2) for t in self.qkv(hidden_states).chunk(3, -1))
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v


def _layer(attention: nn.Module) -> nn.Module:
    layer = nn.Module()
    layer.attn = attention
    return layer


@torch.no_grad()
def test_prefix_joins_the_keys_of_a_module_that_attends_in_its_own_method() -> None:
    torch.manual_seed(0)
    attention = _OwnMethodAttention()
    hooks = AttentionPrefixHooks(_layer(attention), SelfAttention("attn"))
    hidden = torch.randn(2, 5, HEADS * DIM)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., :2] = torch.finfo(mask.dtype).min  # the second row's first two keys are padding
    prefix_keys, prefix_values = torch.randn(1, HEADS, N, DIM), torch.randn(1, HEADS, N, DIM)
    plain = attention(hidden, mask)
    hooks.install(lambda _hidden, _batch: (prefix_keys, prefix_values, None), needs_hidden=False)

    got = attention(hidden, mask)

    # By hand: softmax over [prefix | own] keys, the prefix visible to every query.
    q, k, v = (t.view(2, 5, HEADS, DIM).transpose(1, 2) for t in attention.qkv(hidden).chunk(3, -1))
    keys = torch.cat([prefix_keys.expand(2, -1, -1, -1), k], dim=2)
    values = torch.cat([prefix_values.expand(2, -1, -1, -1), v], dim=2)
    scores = q @ keys.transpose(-1, -2) + torch.cat([torch.zeros(2, 1, 5, N), mask], dim=-1)
    assert_close(got, scores.softmax(-1) @ values)
    hooks.remove()
    assert torch.equal(attention(hidden, mask), plain)  # nothing of the hooks is left: the module's own computation
    assert "_attn" not in attention.__dict__


def test_prefix_at_a_module_that_bypasses_the_attention_interface_is_refused() -> None:
    attention = _BypassingAttention()
    hooks = AttentionPrefixHooks(_layer(attention), SelfAttention("attn"))
    prefix = torch.zeros(1, HEADS, N, DIM)
    hooks.install(lambda _hidden, _batch: (prefix, prefix, None), needs_hidden=False)
    with pytest.raises(AdapterError, match="without transformers' attention interface"):
        attention(torch.randn(1, 5, HEADS * DIM))


@pytest.mark.parametrize("filler", [0, 1])
def test_prompt_positions_start_at_the_first_real_token_whatever_the_padding_positions(filler: int) -> None:
    # A left-padded row: two padding positions (filler 0 or 1, by transformers release), then 0, 1, 2.
    positions = torch.tensor([[0, 1, 2, 3, 4], [filler, filler, 0, 1, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    expected = [[0, 1, 2, 3, 4, 5, 6], [0, 1, filler + 2, filler + 2, 2, 3, 4]]
    assert positions_with_prompt(positions, [(2, 0)], 2, mask).tolist() == expected
    # The mask may already carry the prompt's columns (the padding-mask hook ran first).
    extended = torch.cat([torch.ones(2, 2, dtype=mask.dtype), mask], dim=1)
    assert positions_with_prompt(positions, [(2, 0)], 2, extended).tolist() == expected
    # Without a mask the prompt starts at the position found at its insert point.
    assert positions_with_prompt(positions, [(2, 0)], 2)[1, :2].tolist() == [filler, filler + 1]


def test_weight_conversion_patterns_under_either_attribute() -> None:
    newer = SimpleNamespace(_original_source_patterns=[r"^score\."], source_patterns=["(?P<g0>^score\\.)"])
    older = SimpleNamespace(source_patterns=[r"^score\."])
    assert r"^score\." in _source_patterns(newer)
    assert _source_patterns(older) == {r"^score\."}
    assert _source_patterns(SimpleNamespace()) == set()
