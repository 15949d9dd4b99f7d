"""PEFT's merging methods in ``average_adapter``: ``cat``, TIES, DARE, magnitude pruning and their SVD forms.

Two checks per method: against PEFT's ``add_weighted_adapter`` on the same two LoRAs (PEFT saved
them, this library loads them from PEFT's folders), and against each method's definition from its
paper on small tensors worked out by hand (TIES-Merging, Yadav et al. 2023; DARE, Yu et al. 2024;
task arithmetic, Ilharco et al. 2023, with negative weights).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adapters
from adapters import AdapterConfigError, LoRAConfig
from adapters.methods.lora.averaging import drop_and_rescale, keep_largest, merge_task_tensors
from adapters.testing import assert_close, randomize_adapter

peft = pytest.importorskip("peft")

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=37,
    vocab_size=100,
)
# Two LoRAs of different ranks and scalings (cat accepts them; the other methods need equal shapes).
# (PEFT warns about adapter names inside its "lora_" prefix, such as "a".)
RANKS = {"one": (4, 8), "two": (4, 4)}
CAT_RANKS = {"one": (4, 8), "two": (8, 4)}


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(3, 100, (2, 6), generator=generator)}


def _peft_and_ours(tmp_path, ranks: dict[str, tuple[int, int]]):
    """A PeftModel with two LoRAs (random A and B) and our model with the same two loaded from PEFT's folders."""
    peft_model = None
    generator = torch.Generator().manual_seed(5)
    for name, (r, alpha) in ranks.items():
        config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"])
        if peft_model is None:
            peft_model = peft.get_peft_model(_llama(), config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
    with torch.no_grad():
        for key, param in peft_model.named_parameters():
            if "lora_" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    ours = _llama()
    adapters.init(ours)
    for name in ranks:
        peft_model.save_pretrained(tmp_path / "peft", selected_adapters=[name])
        folder = tmp_path / "peft" / name if name != "default" and (tmp_path / "peft" / name).exists() else tmp_path
        ours.load_adapter(folder, load_as=name)
    return peft_model, ours


def _logits(model, active) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, peft.PeftModel):
            model.set_adapter(active)
        else:
            model.set_active_adapters(active)
        return model(**_inputs()).logits


CASES = [
    # (our combine_strategy, PEFT's combination_type, weights, options)
    ("cat", "cat", [0.7, 0.5], {}),
    ("cat", "cat", [1.0, -0.6], {}),  # task arithmetic: subtract b
    ("ties", "ties", [0.7, 0.5], {"density": 0.5}),
    ("ties", "ties", [1.0, -0.6], {"density": 0.3, "majority_sign_method": "frequency"}),
    ("magnitude_prune", "magnitude_prune", [0.7, 0.5], {"density": 0.4}),
    ("dare_linear", "dare_linear", [0.7, 0.5], {"density": 0.5}),
    ("dare_ties", "dare_ties", [0.7, 0.5], {"density": 0.6}),
    ("lora_delta_w_svd", "svd", [0.7, 0.5], {"svd_rank": 3}),
    ("ties_svd", "ties_svd", [0.7, 0.5], {"density": 0.5, "svd_rank": 4}),
    ("dare_linear_svd", "dare_linear_svd", [0.7, -0.5], {"density": 0.5, "svd_rank": 4}),
    ("dare_ties_svd", "dare_ties_svd", [0.7, 0.5], {"density": 0.7, "svd_rank": 2}),
    ("magnitude_prune_svd", "magnitude_prune_svd", [0.7, 0.5], {"density": 0.5, "svd_rank": 4}),
]


@pytest.mark.parametrize(("ours", "theirs", "weights", "options"), CASES, ids=[f"{c[0]}-{c[2][1]}" for c in CASES])
def test_merging_gives_peft_add_weighted_adapter_outputs(tmp_path, monkeypatch, ours, theirs, weights, options) -> None:
    peft_model, model = _peft_and_ours(tmp_path, CAT_RANKS if ours == "cat" else RANKS)
    assert_close(_logits(model, "one"), _logits(peft_model, "one"), msg="the loaded sources differ from PEFT's")
    # DARE's masks come from torch.bernoulli, drawn in the same order in both libraries (module by
    # module through the model, A then B, the sources in order). Both libraries also initialise the
    # new adapter from the global generator, differently, so the masks get a generator of their own.
    bernoulli = torch.bernoulli
    for merge in (
        lambda: peft_model.add_weighted_adapter(["one", "two"], weights, "merged", combination_type=theirs, **options),
        lambda: model.average_adapter(
            "merged", ["one", "two"], weights=weights, combine_strategy=ours, normalize_weights=False, **options
        ),
    ):
        masks = torch.Generator().manual_seed(11)
        monkeypatch.setattr(torch, "bernoulli", lambda p, masks=masks: bernoulli(p, generator=masks))
        merge()
    expected = _logits(peft_model, "merged")
    got = _logits(model, "merged")
    assert_close(got, expected, msg=f"{ours} against PEFT's {theirs}")
    assert not torch.allclose(got, _logits(model, "one"), atol=1e-4), "the merge gave the first source"


def test_cat_is_exact_task_arithmetic() -> None:
    """``cat``'s update is ``sum_i w_i * dW_i`` for any weights (negative ones subtract a task), ranks summed."""
    model = _llama()
    adapters.init(model)
    model.add_adapter("a", config=LoRAConfig(r=4, alpha=8, attn_matrices=["q", "k", "v"]))
    model.add_adapter("b", config=LoRAConfig(r=2, alpha=4, attn_matrices=["q", "k", "v"]))
    randomize_adapter(model, "a", seed=1)
    randomize_adapter(model, "b", seed=2)
    model.average_adapter("t", ["a", "b"], weights=[1.0, -0.5], combine_strategy="cat", normalize_weights=False)
    assert model.adapters_state.configs["t"].r == 6
    modules = {name: model.adapters_state.modules_of(name) for name in ("a", "b", "t")}
    for path, merged in modules["t"].items():
        prefix = path[: -len("t")]
        expected = modules["a"][prefix + "a"].delta_weight() - 0.5 * modules["b"][prefix + "b"].delta_weight()
        assert_close(merged.delta_weight(), expected)


def test_ties_follows_trim_elect_and_disjoint_merge() -> None:
    """Worked by hand: keep the 2 largest magnitudes of each, elect signs by sum, average the agreeing entries."""
    t1 = torch.tensor([3.0, -1.0, 0.5, 2.0])
    t2 = torch.tensor([-2.0, -4.0, 1.0, 1.0])
    # trimmed: [3, 0, 0, 2] and [-2, -4, 0, 0]; elected (sum): [+, -, +, +]; entry 2: nobody agrees
    merged = merge_task_tensors([t1, t2], [1.0, 1.0], "ties", density=0.5, sign_method="total")
    assert torch.equal(merged, torch.tensor([3.0, -4.0, 0.0, 2.0]))
    # Weights scale the agreeing entries, and the mean is over the agreeing tensors only.
    t3 = torch.tensor([1.0, 1.0, 1.0, 1.0])
    merged = merge_task_tensors([t3, 2 * t3, -t3], [0.5, 0.5, 1.0], "ties", density=1.0, sign_method="frequency")
    assert torch.equal(merged, torch.full((4,), (0.5 + 1.0) / 2))
    # By sum, one large negative entry outvotes two small positive ones.
    merged = merge_task_tensors([t3, t3, -5 * t3], [1.0, 1.0, 1.0], "ties", density=1.0, sign_method="total")
    assert torch.equal(merged, torch.full((4,), -5.0))


def test_magnitude_pruning_keeps_the_largest_entries() -> None:
    t = torch.tensor([[0.1, -5.0, 2.0], [-0.3, 4.0, 0.0]])
    assert torch.equal(keep_largest(t, 0.5), torch.tensor([[0.0, -5.0, 2.0], [0.0, 4.0, 0.0]]))
    assert torch.equal(keep_largest(t, 1.0), t)
    assert torch.equal(keep_largest(t, 0.0), torch.zeros_like(t))


def test_dare_drops_at_rate_one_minus_density_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    t = torch.randn(200, 200)
    pruned = drop_and_rescale(t, 0.3)
    kept = pruned != 0
    assert torch.equal(pruned[kept], t[kept] / 0.3)
    # Binomial(40000, 0.3): the kept fraction is within 5 standard deviations (0.0115) of 0.3.
    assert abs(kept.float().mean().item() - 0.3) < 0.0115
    # Rescaling keeps the expectation: the mean of n draws is t with standard deviation |t| sqrt((1/p - 1) / n).
    small, n = t[:4, :4], 4000
    mean = torch.stack([drop_and_rescale(small, 0.5) for _ in range(n)]).mean(dim=0)
    assert ((mean - small).abs() <= 6 * small.abs() * (1 / n) ** 0.5).all(), "DARE's rescaling is biased"


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("ties", {}, r"needs density"),
        ("dare_linear", {"density": 1.5}, r"density.*in \[0, 1\]"),
        ("linear", {"density": 0.5}, r"density applies only"),
        ("ties_svd", {"density": 0.5}, r"needs svd_rank"),
        ("magnitude_prune", {"density": 0.5, "majority_sign_method": "frequency"}, r"only to the TIES"),
        ("ties", {"density": 0.5, "majority_sign_method": "mean"}, r"'total' or 'frequency'"),
        ("slerp", {}, r"Unknown combine_strategy"),
    ],
)
def test_merging_options_are_checked_before_anything_changes(strategy, options, message) -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("a", config="lora")
    model.add_adapter("b", config="lora")
    before = set(model.state_dict())
    with pytest.raises(AdapterConfigError, match=message):
        model.average_adapter("m", ["a", "b"], combine_strategy=strategy, **options)
    assert set(model.state_dict()) == before and "m" not in model.adapters_state.configs


def test_merging_methods_refuse_adapters_other_than_plain_lora() -> None:
    model = _llama()
    adapters.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    with pytest.raises(AdapterConfigError, match="plain LoRA adapters only"):
        model.average_adapter("m", ["a", "b"], combine_strategy="ties", density=0.5)
