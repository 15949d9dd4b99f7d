"""Adapters trained under FSDP2 (``fully_shard``) in 2 CPU processes (gloo) save whole, equal to one process's.

Why not ``AdapterTrainer(args=TrainingArguments(fsdp=..., fsdp_config=...))``: accelerate (1.15) has
no FSDP on CPU. With ``use_cpu=True`` under torchrun, ``AcceleratorState`` makes the run
``DistributedType.MULTI_CPU`` and takes the FSDP branch only for accelerator devices (MULTI_GPU,
MULTI_XPU, MULTI_NPU, ...), so it drops the FSDP plugin without a word and the Trainer wraps the
model in DDP (``trainer.is_fsdp_enabled`` is False); without ``use_cpu`` the Trainer refuses:
"ValueError: Using fsdp only works in distributed training." ``accelerate launch`` with
``distributed_type: FSDP`` and ``use_cpu: true`` starts each process undistributed
(``DistributedType.NO``). torch's own FSDP2 does run on CPU with gloo, so this file shards the
model with ``fully_shard`` by hand (each BERT layer, then the root: adapter and head parameters
become DTensors sharded over both ranks) and trains it with plain SGD, then saves it both ways
a sharded run saves:

* ``model.save_adapter`` on every rank, which gathers the shards (a collective);
* ``AdapterTrainer._save`` with the full state dict that accelerate's ``get_state_dict`` hands
  ``Trainer.save_model`` under FSDP2 (``get_model_state_dict`` with ``full_state_dict=True,
  cpu_offload=True``: whole tensors on rank 0, which alone writes).

Every saved file must hold the one-process run's keys, each with its whole shape and values: an
empty or partial (one shard's) file fails. One torchrun launch serves every test of the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.testing import assert_close, tolerance

sys.path.insert(0, str(Path(__file__).parent))  # conftest and test_distributed, also when run by torchrun

from test_distributed import GLOBAL_BATCH, STEPS, build_model, start_torchrun, stop_torchrun

CASES = {"lora": "lora[r=4,intermediate_lora=True]", "seq_bn": "seq_bn"}
RANKS = 2
TIMEOUT = 180  # seconds for the launch; it takes about 10
# As in test_distributed: the two halves' gradients are summed in another order than one batch's, and
# three SGD steps at lr 0.5 carry that rounding on (measured there: up to ~250 ulps of the weights' scale).
ULPS = 2048


def _has_fully_shard() -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed import fsdp

    return hasattr(fsdp, "fully_shard")


needs_fully_shard = pytest.mark.skipif(
    not _has_fully_shard(), reason="no torch.distributed.fsdp.fully_shard (FSDP2; torch >= 2.6)"
)


def trainer_for(model: torch.nn.Module, output_dir: Path, fsdp: bool):
    from transformers import TrainingArguments

    from adapters import AdapterTrainer

    extra = {"fsdp": True, "fsdp_config": {"version": 2}, "ddp_backend": "gloo"} if fsdp else {}
    args = TrainingArguments(str(output_dir), use_cpu=True, report_to=[], disable_tqdm=True, **extra)
    return AdapterTrainer(model=model, args=args)


def train(model: torch.nn.Module, rank: int = 0, world: int = 1) -> None:
    """Plain SGD on this rank's share of one global batch; FSDP averages the gradients over the ranks."""
    generator = torch.Generator().manual_seed(11)
    input_ids = torch.randint(3, 100, (GLOBAL_BATCH, 6), generator=generator)
    labels = torch.arange(GLOBAL_BATCH) % 3
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(STEPS):
        ids = input_ids[rows]
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels[rows]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def worker(output_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    facts = {}
    for case, config in CASES.items():
        out = Path(output_dir) / case
        model = build_model(config)
        trainer = trainer_for(model, out, fsdp=True)  # sets up the gloo process group
        facts[case] = {
            "fsdp_enabled": trainer.is_fsdp_enabled,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "backend": dist.get_backend(),
        }
        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        facts[case]["trainable"] = {
            name: [list(p.shape), list(p.to_local().shape) if isinstance(p, DTensor) else None]
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        train(model, rank, world)
        # Every rank calls it: gathering the shards is a collective. Each writes its own folder here,
        # so the test sees that both got whole tensors.
        model.save_adapter(str(out / f"adapter-rank{rank}"), "task")
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
        state_dict = get_model_state_dict(model, options=options)  # what accelerate gives save_model
        trainer._save(str(out / "checkpoint"), state_dict=state_dict)  # Trainer.save_model's FSDP branch
        dist.barrier()
    if rank == 0:
        (Path(output_dir) / "facts.json").write_text(json.dumps(facts))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The torchrun launch and, while it runs, the one-process runs with the same global batch."""
    from adapters.io.adapter_io import adapter_state_dict

    root = tmp_path_factory.mktemp("fsdp")
    launch = start_torchrun(__file__, str(root / "fsdp"))
    start = {}
    try:
        for case, config in CASES.items():
            out = root / "single" / case
            model = build_model(config)
            start[case] = {k: v.clone() for k, v in adapter_state_dict(model.adapters_state, "task").items()}
            trainer = trainer_for(model, out, fsdp=False)
            train(model)
            model.save_adapter(str(out / "adapter"), "task")
            trainer._save(str(out / "checkpoint"))
        output, _ = launch.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_torchrun(launch)
        output, _ = launch.communicate()
        pytest.fail(f"torchrun ran past {TIMEOUT} s (a collective one rank skipped?):\n{output[-6000:]}")
    finally:
        stop_torchrun(launch)
    assert launch.returncode == 0, f"torchrun failed (exit code {launch.returncode}):\n{output[-6000:]}"
    facts = json.loads((root / "fsdp" / "facts.json").read_text())
    return {"root": root, "facts": facts, "start": start, "output": output}


def assert_same_weights(path: Path, expected_path: Path) -> None:
    """``path`` holds exactly the keys of ``expected_path``, each whole (unsharded) and equal within rounding."""
    assert path.is_file(), f"{path} was not written"
    actual, expected = load_file(path), load_file(expected_path)
    missing, unexpected = sorted(expected.keys() - actual.keys()), sorted(actual.keys() - expected.keys())
    assert not missing and not unexpected, f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
    for key, value in expected.items():
        assert actual[key].shape == value.shape, (
            f"{path}: {key} has shape {tuple(actual[key].shape)}, the whole tensor {tuple(value.shape)}: "
            "a shard was saved"
        )
        assert_close(actual[key], value, ulps=ULPS, msg=f"{path}: {key}")


@pytest.mark.distributed
@needs_fully_shard
def test_trainer_fsdp_on_cpu_falls_back_to_ddp(runs):
    """The reason this file shards by hand; when accelerate runs FSDP on CPU, train with the Trainer instead."""
    for case, facts in runs["facts"].items():
        assert facts["backend"] == "gloo", facts
        assert not facts["fsdp_enabled"] and facts["distributed_type"] == "DistributedType.MULTI_CPU", (
            f"{case}: accelerate now runs FSDP on CPU ({facts}): test AdapterTrainer(fsdp=...) itself here"
        )


@pytest.mark.distributed
@needs_fully_shard
@pytest.mark.parametrize("case", CASES)
def test_parameters_were_sharded_and_trained(runs, case):
    trainable = runs["facts"][case]["trainable"]
    assert any(".adapters.task." in n or ".loras.task." in n for n in trainable), sorted(trainable)
    for name, (shape, local) in trainable.items():
        assert local is not None, f"{name} is no DTensor: fully_shard did not shard it"
        assert local[0] == -(-shape[0] // RANKS), f"{name}: local shard {local} of {shape} is not one of {RANKS}"
    trained = load_file(runs["root"] / "single" / case / "adapter" / "adapter.safetensors")
    for key, value in runs["start"][case].items():
        moved, atol = (trained[key] - value).abs().max().item(), tolerance(trained[key], ulps=ULPS)
        assert moved > 100 * atol, (
            f"{key} moved by {moved:.3g}, the comparison's tolerance {atol:.3g}: it would prove little"
        )


@pytest.mark.distributed
@needs_fully_shard
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rank", range(RANKS))
def test_save_adapter_gathers_the_shards(runs, case, rank):
    fsdp, single = runs["root"] / "fsdp" / case / f"adapter-rank{rank}", runs["root"] / "single" / case / "adapter"
    for name in ("adapter.safetensors", "model_head.safetensors"):
        assert_same_weights(fsdp / name, single / name)


@pytest.mark.distributed
@needs_fully_shard
@pytest.mark.parametrize("case", CASES)
def test_trainer_save_with_the_full_state_dict(runs, case):
    fsdp, single = runs["root"] / "fsdp" / case / "checkpoint", runs["root"] / "single" / case / "checkpoint"
    for name in ("task/adapter.safetensors", "head.safetensors"):
        assert_same_weights(fsdp / name, single / name)
    # The same items and layout; the integrity records differ with the weights' rounding.
    manifest, expected = (
        {k: v for k, v in json.loads((folder / "adapters_checkpoint.json").read_text()).items() if k != "integrity"}
        for folder in (fsdp, single)
    )
    assert manifest == expected


def test_trainer_save_takes_the_full_state_dict_by_the_models_names(tmp_path):
    """The tensors of the gathered state dict are written, also where saved keys are not the model's names.

    ViT's adapters are saved under the 4.x names (``vit.encoder.layer.0.attention.attention.query``),
    the model's are 5.x ones (``vit.layers.0.attention.q_proj``): looked up by the saved key, the
    state dict was never used and the module's own tensors were written, which under FSDP or ZeRO-3
    are shards or empty placeholders. One process suffices: the state dict here differs from the model.
    """
    pytest.importorskip("adapters_vit")
    from transformers import ViTConfig, ViTForImageClassification

    import adapters
    from adapters.io.adapter_io import adapter_state_dict
    from adapters.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=8)
    model = ViTForImageClassification(ViTConfig(patch_size=4, num_labels=3, **tiny))
    adapters.init(model)
    model.add_adapter("task", config="lora")
    model.train_adapter("task")
    full = {key: value.detach() + 1 for key, value in model.state_dict().items()}
    save_checkpoint(model, tmp_path, full)
    saved, own = load_file(tmp_path / "task" / "adapter.safetensors"), adapter_state_dict(model.adapters_state, "task")
    assert saved.keys() == own.keys() and any(".attention.attention." in key for key in saved), sorted(saved)
    for key, value in own.items():
        assert torch.equal(saved[key], value + 1), f"{key}: the module's own tensor was written, not the state dict's"
    head = load_file(tmp_path / "head.safetensors")
    assert torch.equal(head["classifier.weight"], full["classifier.weight"])


if __name__ == "__main__":
    worker(sys.argv[1])
    # As in test_distributed: leave without the C++ runtime's teardown, which can abort the process
    # on a gloo thread still joinable ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
