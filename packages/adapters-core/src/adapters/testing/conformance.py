"""The conformance suite every model plugin runs (a pytest plugin plus a base class).

A plugin package proves its model specs by subclassing :class:`ModelConformanceSuite` in its
tests and naming a tiny-model factory per ``model_type``; the suite runs every check for every
registered adapter method on every model type. Enable the plugin in ``conftest.py``::

    pytest_plugins = ["adapters.testing.conformance"]

Example test module of a plugin::

    from adapters.testing import ModelConformanceSuite
    from transformers import BertConfig, BertModel

    class TestMyPlugin(ModelConformanceSuite):
        model_factories = {
            "bert": lambda: BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=37,
                                                 vocab_size=100)),
        }

Each check's name and assertion message say in plain words what the plugin got wrong. A spec path
that names no module of the model fails ``test_spec_matches_the_model`` with the field, the path
and the modules that are there; a check that then breaks with an exception (say an
``AttributeError`` inside ``add_adapter``) reports the same sentences instead of a bare traceback.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytest
import torch
from torch import nn

import adapters

from ..composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from ..configs.base import AdapterConfig
from ..configs.lora import LoRAConfig
from ..errors import AdapterError
from ..plugins.interface import AdapterModelInterface
from ..plugins.manager import get_registry
from ..plugins.spec import ModelSpec
from .numerics import assert_close
from .spec_check import spec_problems

ADAPTER = "conformance"
# (test class, model type) -> the model its factory built and the random state after the build.
_BUILT_MODELS: dict[tuple[type, str], tuple[nn.Module, torch.Tensor]] = {}
# A LoRA on every linear layer an adapter method may share a hook with (q, k, v, FFN in and out).
_EVERY_LINEAR = "conformance_lora"
_LORA_ON_EVERY_LINEAR = LoRAConfig(
    r=4, alpha=8, attn_matrices=("q", "k", "v"), intermediate_lora=True, output_lora=True
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adapters_conformance: a check of the adapters plugin conformance suite")


def randomize_adapter(model: nn.Module, name: str, std: float = 0.1, seed: int = 0) -> None:
    """Give every parameter of an adapter random values, so zero-initialised parts act too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.adapters_state.parameters_of(name):
            param.copy_(torch.randn(param.shape, generator=generator) * std + (1.0 if param.numel() == 1 else 0.0))


def method_cases() -> list[Any]:
    """One pytest param per (method, config variant) of every registered method."""
    cases = []
    for method in get_registry().methods:
        for case_name, config in method.conformance_configs().items():
            cases.append(pytest.param((method, config), id=f"{method.name}-{case_name}"))
    return cases


def _explains_spec_errors(check: Callable) -> Callable:
    """Turn an exception a check raises because of a wrong spec path into a failure that names the path.

    Assertion failures, skips and errors of a correct spec pass through unchanged.
    """

    @functools.wraps(check)
    def run_check(self: ModelConformanceSuite, *args: Any, **kwargs: Any) -> None:
        try:
            check(self, *args, **kwargs)
            return
        except AssertionError:
            raise
        except Exception as error:
            model_type = kwargs.get("model_type", args[0] if args else None)
            problems = self.spec_problems(model_type) if model_type is not None else []
            if not problems:
                raise
            message = f"{check.__name__} raised {type(error).__name__}: {error}\n" + _describe_problems(
                model_type, problems
            )
        # Outside the except block, so that pytest shows the sentences without the chained traceback.
        pytest.fail(message, pytrace=False)

    return run_check


def _describe_problems(model_type: str, problems: list[str]) -> str:
    return f"The plugin's ModelSpec for {model_type!r} does not match the model:\n" + "\n".join(
        f"  - {problem}" for problem in problems
    )


def _enable_checkpointing(model: nn.Module) -> None:
    # transformers renamed gradient to activation checkpointing during 5.x; support both names.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class ModelConformanceSuite:
    """Subclass in a plugin's tests; set :attr:`model_factories`.

    Attributes:
        model_factories: ``model_type`` to a function returning a tiny, randomly initialised base
            model of that type (a few hundred KB). Called once per check; it must build the same
            weights every time for a given torch seed.
        seq_len, batch_size: the size of the random inputs.
        without_gradient_checkpointing: model types whose transformers classes do not support
            gradient checkpointing at all (e.g. ALBERT); the suite checks that this is still so
            and skips the gradient-checkpointing check for them instead of failing it.
        refused: combinations a model refuses on purpose: ``model_type`` to method names
            (``"prompt_tuning"``) or case ids as in the test ids (``"bottleneck-seq_bn_inv"``). For
            these the suite checks that ``add_adapter`` raises an ``AdapterConfigError`` and leaves
            the model unchanged, then skips the other checks (and fails if the adapter is accepted).
        interfaces, specs: ``model_type`` to the :class:`~adapters.AdapterModelInterface` or
            :class:`~adapters.plugins.ModelSpec` that ``adapters.init`` gets for it: a model no
            plugin supports, adapted by a user's interface or spec, runs the whole suite too.
    """

    model_factories: Mapping[str, Callable[[], nn.Module]] = {}
    interfaces: Mapping[str, AdapterModelInterface] = {}
    specs: Mapping[str, ModelSpec] = {}
    without_gradient_checkpointing: frozenset[str] = frozenset()
    refused: Mapping[str, Collection[str]] = {}
    seq_len: int = 7
    batch_size: int = 2

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "model_type" in metafunc.fixturenames:
            metafunc.parametrize("model_type", sorted(self.model_factories))
        if "case" in metafunc.fixturenames:
            metafunc.parametrize("case", method_cases())

    @pytest.fixture(autouse=True)
    def _refused_combination(self, request: pytest.FixtureRequest) -> None:
        params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
        if "model_type" not in params or "case" not in params:
            return
        model_type, (method, config) = params["model_type"], params["case"]
        names = {f"{method.name}-{n}" for n, c in method.conformance_configs().items() if c == config}
        if not ({method.name} | names) & set(self.refused.get(model_type, ())):
            return
        model = self.make_model(model_type)
        self.init_adapters(model)
        keys = set(model.state_dict())
        with pytest.raises(adapters.AdapterConfigError) as refusal:
            model.add_adapter(ADAPTER, config=config)
        assert set(model.state_dict()) == keys and not model.adapters_state.configs, "a refused adapter left modules"
        pytest.skip(f"{model_type} refuses {sorted(names)[0] if names else method.name} on purpose: {refusal.value}")

    # -- helpers a plugin may override ----------------------------------------------------
    def spec_problems(self, model_type: str) -> list[str]:
        """What in the plugin's spec does not match a model of ``model_type`` (see :mod:`.spec_check`).

        Computed once per suite class and model type.
        """
        cache = type(self).__dict__.get("_spec_problem_cache")
        if cache is None:
            cache = {}
            type(self)._spec_problem_cache = cache
        if model_type not in cache:
            model = self.make_model(model_type)
            try:
                self.init_adapters(model)
            except AdapterError as error:
                cache[model_type] = [f"adapters.init({type(model).__name__}) failed: {error}"]
            else:
                cache[model_type] = spec_problems(model)
        return cache[model_type]

    def init_adapters(self, model: nn.Module) -> None:
        """``adapters.init`` with the :attr:`interfaces` or :attr:`specs` entry of the model's type, if any."""
        model_type = model.config.model_type
        adapters.init(model, spec=self.specs.get(model_type), interface=self.interfaces.get(model_type))

    def make_model(self, model_type: str) -> nn.Module:
        """A fresh ``model_factories[model_type]()`` built under ``torch.manual_seed(0)``, in eval mode.

        Initialising the weights is a large part of each check on a tiny model, so the factory runs
        once per test class and model type; each call returns a deep copy of that build, and leaves
        the random state as the build left it (as if the factory had run again).
        """
        key = (type(self), model_type)
        if key not in _BUILT_MODELS:
            torch.manual_seed(0)
            model = self.model_factories[model_type]().eval()
            _BUILT_MODELS[key] = (model, torch.get_rng_state())
        model, rng_state = _BUILT_MODELS[key]
        torch.set_rng_state(rng_state)
        return copy.deepcopy(model)

    def make_inputs(self, model_type: str, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The keyword arguments of one forward pass of ``model``; override for other input kinds.

        The default builds what ``model.main_input_name`` asks for: token ids with a padded
        attention mask (:meth:`text_inputs`) or images (:meth:`image_inputs`). A model taking
        both (CLIPModel) overrides this, e.g.
        ``{**self.text_inputs(model.config.text_config, generator),
        **self.image_inputs(model.config.vision_config, generator)}``.
        """
        if getattr(model, "main_input_name", "input_ids") == "pixel_values":
            return self.image_inputs(model.config, generator)
        return self.text_inputs(model.config, generator)

    def text_inputs(self, config: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``input_ids`` (``batch_size`` x ``seq_len``, ids from 3) and an attention mask with padding."""
        input_ids = torch.randint(3, config.vocab_size, (self.batch_size, self.seq_len), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[-1, -2:] = 0
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def image_inputs(self, config: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``pixel_values`` of the config's image size and channel count."""
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (self.batch_size, config.num_channels, height, width)
        return {"pixel_values": torch.randn(shape, generator=generator)}

    def _inputs(self, model_type: str, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.make_inputs(model_type, model, torch.Generator().manual_seed(1))

    def output_of(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(**inputs)
        return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]

    def loss_of(self, output: torch.Tensor) -> torch.Tensor:
        # A fixed random projection: LayerNorm outputs make norm-based losses nearly constant.
        weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
        return (output * weights).sum()

    def _setup(self, model_type: str, case: Any) -> tuple[nn.Module, dict, AdapterConfig]:
        model = self.make_model(model_type)
        self.init_adapters(model)
        return model, self._inputs(model_type, model), case[1]

    # -- the checks -------------------------------------------------------------------------
    def test_spec_matches_the_model(self, model_type: str) -> None:
        problems = self.spec_problems(model_type)
        assert not problems, _describe_problems(model_type, problems)

    @_explains_spec_errors
    def test_no_active_adapter_is_bit_identical(self, model_type: str, case: Any) -> None:
        model = self.make_model(model_type)
        inputs = self._inputs(model_type, model)
        with torch.no_grad():
            plain = self.output_of(model, inputs)
            self.init_adapters(model)
            assert torch.equal(self.output_of(model, inputs), plain), "adapters.init changed the model's output"
            model.add_adapter(ADAPTER, config=case[1])
            randomize_adapter(model, ADAPTER)
            assert torch.equal(self.output_of(model, inputs), plain), "an added but inactive adapter changed the output"

    @_explains_spec_errors
    def test_adds_trainable_parameters(self, model_type: str, case: Any) -> None:
        model, _, config = self._setup(model_type, case)
        before = {n for n, _ in model.named_parameters()}
        model.add_adapter(ADAPTER, config=config)
        added = {n for n, _ in model.named_parameters()} - before
        assert added, "add_adapter created no parameters"
        assert all(f".{ADAPTER}." in n for n in added), f"parameters outside the adapter's modules: {sorted(added)[:3]}"
        model.train_adapter(ADAPTER)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == added, (
            "after train_adapter, exactly the adapter's parameters must be trainable; "
            f"extra: {sorted(trainable - added)[:3]}, frozen: {sorted(added - trainable)[:3]}"
        )

    @_explains_spec_errors
    def test_activation_changes_output_and_deactivation_restores_it(self, model_type: str, case: Any) -> None:
        model, inputs, config = self._setup(model_type, case)
        with torch.no_grad():
            plain = self.output_of(model, inputs)
            model.add_adapter(ADAPTER, config=config, set_active=True)
            randomize_adapter(model, ADAPTER)
            adapted = self.output_of(model, inputs)
            positions = case[0].input_positions(config, plain.shape[1])
            if positions is not None:
                # The method adds positions (prompt tuning, see AdapterMethod.input_positions): compare the input's.
                assert adapted.shape[1] > plain.shape[1], "input_positions is set but the output has no added positions"
                adapted = adapted[:, positions]
            assert not torch.allclose(adapted, plain, atol=1e-4), "the active adapter does not change the output"
            assert torch.isfinite(adapted).all(), "the adapter produced non-finite values"
            model.set_active_adapters(None)
            assert torch.equal(self.output_of(model, inputs), plain), "deactivating did not restore the output exactly"

    @_explains_spec_errors
    def test_save_load_round_trip(self, model_type: str, case: Any) -> None:
        model, inputs, config = self._setup(model_type, case)
        model.add_adapter(ADAPTER, config=config, set_active=True)
        randomize_adapter(model, ADAPTER)
        with torch.no_grad():
            expected = self.output_of(model, inputs)
        fresh = self.make_model(model_type)
        self.init_adapters(fresh)
        with tempfile.TemporaryDirectory() as folder:
            model.save_adapter(folder, ADAPTER)
            # load_adapter raises on any missing or unexpected key.
            name = fresh.load_adapter(folder, load_as="reloaded", set_active=True)
        with torch.no_grad():
            got = self.output_of(fresh, inputs)
        assert name == "reloaded"
        # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg="the reloaded adapter gives other outputs")

    @_explains_spec_errors
    def test_training_step_changes_only_adapter_parameters(self, model_type: str, case: Any) -> None:
        model, inputs, config = self._setup(model_type, case)
        model.add_adapter(ADAPTER, config=config)
        randomize_adapter(model, ADAPTER)
        model.train_adapter(ADAPTER)
        adapter_names = {
            f"{model.adapters_state.base_prefix}{n}" for n, _ in model.adapters_state.parameters_of(ADAPTER)
        }
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        torch.manual_seed(0)
        self.loss_of(self.output_of(model, inputs)).backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed, "one optimizer step changed no parameter: the adapter gets no gradient"
        assert changed <= adapter_names, f"non-adapter parameters changed: {sorted(changed - adapter_names)[:3]}"

    @_explains_spec_errors
    def test_delete_removes_every_parameter(self, model_type: str, case: Any) -> None:
        model, inputs, config = self._setup(model_type, case)
        keys = set(model.state_dict())
        with torch.no_grad():
            plain = self.output_of(model, inputs)
        model.add_adapter(ADAPTER, config=config, set_active=True)
        model.delete_adapter(ADAPTER)
        assert set(model.state_dict()) == keys, "delete_adapter left parameters or buffers behind"
        assert model.active_adapters is None
        with torch.no_grad():
            assert torch.equal(self.output_of(model, inputs), plain), "output differs after delete_adapter"

    @_explains_spec_errors
    def test_merge_and_reset_are_exact(self, model_type: str, case: Any) -> None:
        method, config = case
        if not method.supports_merge:
            model, _, _ = self._setup(model_type, case)
            model.add_adapter(ADAPTER, config=config)
            with pytest.raises(adapters.AdapterError, match="cannot be merged"):
                model.merge_adapter(ADAPTER)
            return
        model, inputs, config = self._setup(model_type, case)
        weights = copy.deepcopy(model.state_dict())
        model.add_adapter(ADAPTER, config=config, set_active=True)
        randomize_adapter(model, ADAPTER, std=0.05)
        with torch.no_grad():
            unmerged = self.output_of(model, inputs)
            model.merge_adapter(ADAPTER)
            merged = self.output_of(model, inputs)
        assert_close(merged, unmerged, msg="merged output differs from unmerged")
        model.reset_adapter()
        state = model.state_dict()
        for key, value in weights.items():
            # reset_adapter copies back the weights kept at merge time: bit for bit.
            assert torch.equal(state[key], value), f"reset_adapter did not restore {key} bit for bit"

    @_explains_spec_errors
    def test_lora_on_every_linear_acts_with_the_method_as_if_merged(self, model_type: str, case: Any) -> None:
        """Another method's hooks on a linear layer (a bottleneck reading ``h``, prefix keys and values)
        see the output with LoRA's update: the same as with that LoRA merged into the weights."""
        method, config = case
        if method.name == "lora":
            pytest.skip(
                "the case is a LoRA-family adapter itself: beside another LoRA on the same linear layers it stacks "
                "(reads that LoRA's update), which no merged weight reproduces"
            )
        refused = set(self.refused.get(model_type, ()))
        if {"lora", "lora-lora_all_linears"} & refused:
            pytest.skip(f"{model_type} refuses LoRA on every linear layer")
        # Hooks on one module run in the order they were registered, which follows the order the
        # adapters were added: both orders.
        for lora_first in (False, True):
            model, inputs, config = self._setup(model_type, case)
            adds = [(ADAPTER, config, 0.1), (_EVERY_LINEAR, _LORA_ON_EVERY_LINEAR, 0.05)]
            for seed, (name, adapter_config, std) in enumerate(adds[::-1] if lora_first else adds):
                model.add_adapter(name, config=adapter_config)
                randomize_adapter(model, name, std=std, seed=seed)
            model.set_active_adapters(Stack(ADAPTER, _EVERY_LINEAR))
            # With autograd on, as in training: without it LoRA adds its update in place, where a hook
            # that kept the output before the update would see it too.
            together = self.output_of(model, inputs).detach()
            model.set_active_adapters(None)
            model.merge_adapter(_EVERY_LINEAR)
            merged = self._composed(model, ADAPTER, inputs)
            # Merging reorders float sums through every layer: rounding of the output's scale (~10 ulps), far
            # below what a hook reading the output without the update gives (thousands of ulps).
            message = (
                f"{method.name} with an active LoRA (added {'before' if lora_first else 'after'} it) differs from "
                "the LoRA merged: a hook misses LoRA's update"
            )
            assert_close(together, merged, msg=message)

    @_explains_spec_errors
    def test_leave_out_is_respected(self, model_type: str, case: Any) -> None:
        model, _, config = self._setup(model_type, case)
        if not case[0].layer_wise:
            # Declared by the method (AdapterMethod.layer_wise): it acts once per model, so it has no layers to skip.
            assert "leave_out" not in set(config), f"{type(config).__name__} has leave_out but is not layer-wise"
            pytest.skip(f"{case[0].name} acts once per model (layer_wise=False): no leave_out to check")
        if "leave_out" not in {f for f in config}:
            pytest.fail(f"{type(config).__name__} has no leave_out option")
        model.add_adapter(ADAPTER, config=config.replace(leave_out=[0]))
        layers = model.get_adapter(ADAPTER)
        assert 0 not in layers, "leave_out=[0] still put adapter modules into layer 0"
        assert layers, "with leave_out=[0] no other layer got the adapter"

    @_explains_spec_errors
    def test_gradient_checkpointing_gives_same_gradients(self, model_type: str, case: Any) -> None:
        grads = []
        for checkpointing in (False, True):
            model, inputs, config = self._setup(model_type, case)
            if model_type in self.without_gradient_checkpointing:
                assert not model.supports_gradient_checkpointing, (
                    f"{type(model).__name__} supports gradient checkpointing now: remove {model_type!r} "
                    "from without_gradient_checkpointing"
                )
                pytest.skip(f"{type(model).__name__} does not support gradient checkpointing (transformers)")
            if not model.supports_gradient_checkpointing:
                pytest.fail(f"{type(model).__name__} does not support gradient checkpointing")
            model.add_adapter(ADAPTER, config=config)
            randomize_adapter(model, ADAPTER)
            model.train_adapter(ADAPTER)
            if checkpointing:
                _enable_checkpointing(model)
            torch.manual_seed(0)
            self.loss_of(self.output_of(model, inputs)).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys(), "gradient checkpointing changed which parameters get gradients"
        for name, grad in grads[0].items():
            assert_close(grads[1][name], grad, msg=f"gradient of {name} differs under checkpointing")

    # -- composition ------------------------------------------------------------------------
    def _two_adapters(self, model_type: str, case: Any) -> tuple[nn.Module, dict]:
        model, inputs, config = self._setup(model_type, case)
        for seed, name in enumerate((ADAPTER, "second")):
            model.add_adapter(name, config=config)
            randomize_adapter(model, name, seed=seed)
        return model, inputs

    def _composed(self, model: nn.Module, setup: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        model.set_active_adapters(setup)
        with torch.no_grad():
            return self.output_of(model, inputs)

    def _supports(self, case: Any, block: type) -> bool:
        return block in case[0].supported_blocks

    @_explains_spec_errors
    def test_batch_split_equals_each_adapter_on_its_examples(self, model_type: str, case: Any) -> None:
        if not self._supports(case, BatchSplit):
            pytest.skip(f"{case[0].name} does not support BatchSplit (see test_unsupported_blocks_are_refused)")
        model, inputs = self._two_adapters(model_type, case)
        first = {k: v[:1] for k, v in inputs.items()}
        rest = {k: v[1:] for k, v in inputs.items()}
        split = self._composed(model, BatchSplit(ADAPTER, "second", batch_sizes=[1, self.batch_size - 1]), inputs)
        expected = torch.cat([self._composed(model, ADAPTER, first), self._composed(model, "second", rest)])
        assert_close(split, expected, msg="BatchSplit differs from separate runs")

    @_explains_spec_errors
    def test_parallel_equals_separate_runs(self, model_type: str, case: Any) -> None:
        if not self._supports(case, Parallel):
            pytest.skip(f"{case[0].name} does not support Parallel (see test_unsupported_blocks_are_refused)")
        model, inputs = self._two_adapters(model_type, case)
        parallel = self._composed(model, Parallel(ADAPTER, "second"), inputs)
        expected = torch.cat([self._composed(model, ADAPTER, inputs), self._composed(model, "second", inputs)])
        assert_close(parallel, expected, msg="Parallel differs from separate runs")

    @_explains_spec_errors
    def test_average_with_weights_one_zero_is_the_first_adapter(self, model_type: str, case: Any) -> None:
        if not self._supports(case, Average):
            pytest.skip(f"{case[0].name} does not support Average (see test_unsupported_blocks_are_refused)")
        model, inputs = self._two_adapters(model_type, case)
        averaged = self._composed(model, Average(ADAPTER, "second", weights=[1, 0]), inputs)
        assert_close(averaged, self._composed(model, ADAPTER, inputs), msg="Average([1, 0]) != first")

    @_explains_spec_errors
    def test_unsupported_blocks_are_refused(self, model_type: str, case: Any) -> None:
        model, inputs = self._two_adapters(model_type, case)
        model.set_active_adapters(ADAPTER)
        with torch.no_grad():
            before = self.output_of(model, inputs)
        blocks = {
            Split: Split(ADAPTER, "second", splits=[1, self.seq_len - 1]),
            BatchSplit: BatchSplit(ADAPTER, "second", batch_sizes=[1, self.batch_size - 1]),
            Parallel: Parallel(ADAPTER, "second"),
            Average: Average(ADAPTER, "second"),
            Fuse: Fuse(ADAPTER, "second"),
        }
        for block_type, setup in blocks.items():
            if self._supports(case, block_type):
                continue
            with pytest.raises(adapters.CompositionError, match=block_type.__name__):
                model.set_active_adapters(setup)
        assert model.active_adapters == Stack(ADAPTER), "a refused setup changed the active adapters"
        with torch.no_grad():
            assert torch.equal(self.output_of(model, inputs), before), "a refused setup changed the output"

    @_explains_spec_errors
    def test_fuse_trains_saves_and_loads(self, model_type: str, case: Any) -> None:
        if not self._supports(case, Fuse):
            pytest.skip(f"{case[0].name} does not support Fuse (see test_unsupported_blocks_are_refused)")
        model, inputs = self._two_adapters(model_type, case)
        setup = Fuse(ADAPTER, "second")
        model.add_adapter_fusion(setup, config="dynamic")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "adapter_fusion_layer" in name:
                    param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
        model.train_adapter_fusion(setup)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        self.loss_of(self.output_of(model, inputs)).backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed, "training the fusion changed no parameter"
        outside = sorted(n for n in changed if "adapter_fusion_layer" not in n)
        assert not outside, f"training the fusion changed other weights: {outside[:3]}"
        model.eval()
        expected = self._composed(model, setup, inputs)
        fresh = self.make_model(model_type)
        self.init_adapters(fresh)
        with tempfile.TemporaryDirectory() as folder:
            for name in (ADAPTER, "second"):
                model.save_adapter(f"{folder}/{name}", name)
                fresh.load_adapter(f"{folder}/{name}")
            model.save_adapter_fusion(f"{folder}/fusion", setup)
            fresh.load_adapter_fusion(f"{folder}/fusion", set_active=True)
        with torch.no_grad():
            got = self.output_of(fresh, inputs)
        # The same model with the very weights (saved, loaded back) on the same inputs: the same computation.
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg="the reloaded fusion gives other outputs")
