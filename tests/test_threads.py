"""Concurrent forward passes on one model: each thread (and asyncio task) runs its own setup.

Every case runs a few threads on one shared tiny model, each thread inside its own
``AdapterSetup`` (or the model-wide setup), many forward passes each, and checks every output
against the output of that setup computed alone beforehand. Adapters have random weights, so a
forward pass that used another thread's setup (or none) gives another output. The threads start
together (a barrier) and the interpreter switches threads often (``sys.setswitchinterval``), so
forward passes interleave layer by layer.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from conftest import TINY_BERT, with_random_adapters
from transformers import BertConfig

from adapters import AdapterSetup, BertAdapterModel
from adapters.composition import BatchSplit, Fuse, Parallel, Stack
from adapters.methods.fusion import FusionRegistry
from adapters.testing import assert_close, randomize_adapter, tolerance

ROUNDS = 12  # forward passes per thread


@pytest.fixture(autouse=True)
def interleaved() -> Iterator[None]:
    # One torch thread per forward pass and frequent interpreter switches: the threads' passes interleave.
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(1)
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        torch.set_num_threads(threads)


def batch(rows: int = 4, length: int = 9) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 100, (rows, length), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[-1, -3:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def alone(model, setup: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output of ``setup`` with nothing else running."""
    with torch.no_grad(), AdapterSetup(setup):
        return model(**inputs).last_hidden_state


def run_together(workers: list[Callable[[], Any]], rounds: int = ROUNDS) -> list[list[Any]]:
    """Run each worker ``rounds`` times in its own thread, all threads at once; their results per thread.

    An exception in a thread is re-raised here (the first one), with the thread's traceback.
    """
    barrier = threading.Barrier(len(workers))
    results: list[list[Any]] = [[] for _ in workers]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(rounds):
                    results[index].append(workers[index]())
        except BaseException as error:  # reported in the main thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def forward_under(model, setup: Any, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with AdapterSetup(setup):
            return model(**inputs).last_hidden_state

    return forward


def check_each_thread_got_its_own(model, setups: list[Any], inputs: dict[str, torch.Tensor]) -> None:
    expected = [alone(model, setup, inputs) for setup in setups]
    # The setups must be told apart by their outputs, or the test proves nothing.
    for i in range(len(setups)):
        for j in range(i):
            if expected[i].shape == expected[j].shape:
                assert not torch.allclose(expected[i], expected[j], atol=1e-3), (setups[i], setups[j])
    results = run_together([forward_under(model, setup, inputs) for setup in setups])
    for setup, outputs, want in zip(setups, results, expected, strict=True):
        for round_, output in enumerate(outputs):
            assert_close(output, want, msg=f"thread of {setup!r}, forward pass {round_}")


def test_bottleneck_adapters_per_thread():
    model = with_random_adapters({"a": "seq_bn", "b": "seq_bn", "c": "double_seq_bn"})
    check_each_thread_got_its_own(model, ["a", "b", "c", Stack("a", "b")], batch())


def test_lora_adapters_per_thread():
    lora = "lora[r=4,intermediate_lora=True,output_lora=True]"
    model = with_random_adapters({"a": lora, "b": lora, "c": "ia3", "d": "lora", "e": "lora[r=2]"})
    # (A Stack of LoRAs needs square layers: d and e adapt the attention projections only.)
    check_each_thread_got_its_own(model, ["a", "b", "c", Stack("d", "e")], batch())


def test_mixed_methods_per_thread():
    model = with_random_adapters({"bn": "seq_bn", "lora": "lora", "reft": "loreft", "par": "par_bn", "u": "unipelt"})
    check_each_thread_got_its_own(model, ["bn", "lora", "reft", "par", "u"], batch())


def test_parallel_setups_per_thread():
    model = with_random_adapters({"a": "seq_bn", "b": "seq_bn", "c": "lora", "d": "seq_bn[leave_out=[0]]"})
    check_each_thread_got_its_own(model, [Parallel("a", "b"), "c", Parallel("c", "d", "a"), "d"], batch())


def test_batch_split_setups_per_thread():
    # Plain LoRAs and plain bottlenecks take the batched paths; the ReFT split goes through the engine.
    lora = "lora[r=4]"
    model = with_random_adapters({"a": lora, "b": lora, "p": "seq_bn", "q": "seq_bn", "r": "loreft"})
    setups = [
        BatchSplit("a", "b", batch_sizes=[2, 2]),
        BatchSplit("b", "a", batch_sizes=[1, 3]),
        BatchSplit("p", "q", batch_sizes=[3, 1]),
        BatchSplit("r", "p", batch_sizes=[2, 2]),
    ]
    check_each_thread_got_its_own(model, setups, batch())


def test_prefix_tuning_per_thread():
    model = with_random_adapters(
        {"a": "prefix_tuning", "b": "prefix_tuning[prefix_length=5]", "c": "lora", "g": "unipelt"}
    )
    setups = ["a", "b", "c", Parallel("a", "b"), BatchSplit("b", "a", batch_sizes=[2, 2]), "g"]
    check_each_thread_got_its_own(model, setups, batch())


def test_prompt_tuning_per_thread():
    model = with_random_adapters({"a": "prompt_tuning", "b": "prompt_tuning", "c": "seq_bn"})
    setups = ["a", "b", "c", BatchSplit("a", "b", batch_sizes=[1, 3]), Parallel("b", "a")]
    check_each_thread_got_its_own(model, setups, batch())


def test_fusion_per_thread():
    model = with_random_adapters({"a": "seq_bn", "b": "seq_bn", "c": "seq_bn"})
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["b", "c"])
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in ("a,b", "b,c"):
            for _, param in FusionRegistry.of(model.adapters_state).require(name).named_parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    check_each_thread_got_its_own(model, [Fuse("a", "b"), Fuse("b", "c"), "a", Stack("c", Fuse("a", "b"))], batch())


def test_model_wide_setup_in_threads_without_adapter_setup():
    # Passes under the model-wide setup, several at once: the per-pass state of each is its own.
    model = with_random_adapters({"a": "seq_bn", "b": "lora", "p": "prefix_tuning"})
    model.set_active_adapters(Stack("p", "a", "b"))
    inputs = [batch(rows) for rows in (1, 2, 3, 4, 5, 6)]
    with torch.no_grad():
        expected = [model(**x).last_hidden_state for x in inputs]
    results = run_together([lambda x=x: model(**x).last_hidden_state for x in inputs], rounds=3 * ROUNDS)
    for outputs, want in zip(results, expected, strict=True):
        for output in outputs:
            assert_close(output, want)


def test_set_active_adapters_during_other_threads_forward_passes():
    """Changing the model-wide setup while passes run: each pass runs one whole setup, never a mix.

    A pass that started under the old setup finishes under it; the change applies to passes
    started after it. Passes inside ``AdapterSetup`` are not affected at all.
    """
    model = with_random_adapters({"a": "seq_bn", "b": "lora", "c": "seq_bn", "p": "prefix_tuning"})
    inputs = batch()
    choices = ["a", "b", Parallel("a", "c"), Stack("p", "c"), None]
    expected = [alone(model, setup, inputs) for setup in choices]
    pinned = alone(model, "c", inputs)
    switches = iter(choices * (2 * ROUNDS))

    def switch() -> None:
        model.set_active_adapters(next(switches))

    def plain_forward() -> torch.Tensor:
        return model(**inputs).last_hidden_state

    results = run_together([switch, plain_forward, plain_forward, forward_under(model, "c", inputs)], rounds=3 * ROUNDS)
    for output in results[1] + results[2]:
        matches = [
            want.shape == output.shape and torch.allclose(output, want, rtol=0, atol=tolerance(want))
            for want in expected
        ]
        assert any(matches), "a forward pass computed none of the setups that were active"
    for output in results[3]:
        assert_close(output, pinned)


def test_adding_and_deleting_adapters_during_other_threads_forward_passes():
    # Structural changes wait for the passes in flight; passes never see half an adapter.
    model = with_random_adapters({"a": "seq_bn", "b": "lora"})
    inputs = batch()
    expected = {setup: alone(model, setup, inputs) for setup in ("a", "b")}

    def churn() -> None:
        model.add_adapter("tmp", "seq_bn[reduction_factor=4]")
        randomize_adapter(model, "tmp", std=0.3, seed=9)
        model.set_active_adapters("tmp")
        model.delete_adapter("tmp")

    results = run_together([churn, forward_under(model, "a", inputs), forward_under(model, "b", inputs)], rounds=ROUNDS)
    for setup, outputs in zip(("a", "b"), results[1:], strict=True):
        for output in outputs:
            assert_close(output, expected[setup])
    assert "tmp" not in model.adapters_state.configs


def test_asyncio_tasks_see_their_own_setup():
    """Two tasks interleave awaits inside their AdapterSetup blocks (and run passes in worker threads)."""
    model = with_random_adapters({"a": "seq_bn", "b": "lora"})
    inputs = batch()
    expected = {setup: alone(model, setup, inputs) for setup in ("a", "b")}
    seen: dict[str, list[Any]] = {"a": [], "b": []}

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(**inputs).last_hidden_state

    async def task(name: str) -> None:
        with AdapterSetup(name):
            for _ in range(ROUNDS):
                await asyncio.sleep(0)
                with torch.no_grad():
                    seen[name].append(model(**inputs).last_hidden_state)  # in the task itself
                # In a worker thread, which gets a copy of the task's context.
                seen[name].append(await asyncio.to_thread(forward))

    async def main() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(main())
    for name, outputs in seen.items():
        assert len(outputs) == 2 * ROUNDS
        for output in outputs:
            assert_close(output, expected[name])


def test_adapter_setup_does_not_leak_into_threads_it_did_not_start():
    # A thread started outside the block runs the model-wide setup, whatever other threads have open.
    model = with_random_adapters({"a": "seq_bn", "b": "lora"})
    model.set_active_adapters("b")
    inputs = batch()
    expected_a, expected_b = alone(model, "a", inputs), alone(model, "b", inputs)
    inside = threading.Event()
    done = threading.Event()
    outputs: list[torch.Tensor] = []

    def holder() -> None:
        with AdapterSetup("a"):
            inside.set()
            done.wait(30)
            with torch.no_grad():
                outputs.append(("a", model(**inputs).last_hidden_state))

    def other() -> None:
        inside.wait(30)
        with torch.no_grad():
            outputs.append(("b", model(**inputs).last_hidden_state))
        done.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = dict(outputs)
    assert_close(got["a"], expected_a)
    assert_close(got["b"], expected_b)


def test_heads_model_per_thread():
    # A flexible-head model: the body's setup and the head chosen per thread.
    torch.manual_seed(0)
    model = BertAdapterModel(BertConfig(**{**TINY_BERT, "num_hidden_layers": 3})).eval()
    for seed, name in enumerate(("a", "b")):
        model.add_adapter(name, "seq_bn")
        randomize_adapter(model, name, std=0.3, seed=seed)
        model.add_classification_head(name, num_labels=2 + seed)
    inputs = batch()

    def logits(name: str) -> Callable[[], torch.Tensor]:
        def forward() -> torch.Tensor:
            with AdapterSetup(name):
                return model(**inputs).logits

        return forward

    with torch.no_grad():
        expected = [logits(name)() for name in ("a", "b")]
    results = run_together([logits("a"), logits("b")])
    for outputs, want in zip(results, expected, strict=True):
        for output in outputs:
            assert_close(output, want)
