"""AdapterTrainer under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals one process with the same global batch.

Run as a script, this file is the torchrun worker; as a test, it launches torchrun in a subprocess
and trains the same model in the test process for comparison. Only trainable parameters (adapter
and head) take part in DDP's gradient sync: frozen ones have ``requires_grad=False``, which DDP skips.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))  # conftest's tiny models, also when run by torchrun

GLOBAL_BATCH = 8
STEPS = 3


def build_model(config: str = "lora[r=4,intermediate_lora=True]") -> torch.nn.Module:
    """A tiny BERT classifier (no dropout) with an adapter (a LoRA) set up for training; the same in every process.

    A large initializer range gives the adapter gradients big enough that three SGD steps move
    every parameter well beyond the comparison's tolerance.
    """
    from conftest import tiny_bert_classifier

    import adapters

    model = tiny_bert_classifier(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
    adapters.init(model)
    model.add_adapter("task", config=config)
    model.train_adapter("task")
    return model


def train(output_dir: str, per_device_batch: int) -> tuple[torch.nn.Module, object]:
    """Train the LoRA and the head with AdapterTrainer; plain SGD would show any gradient scale error."""
    from transformers import TrainingArguments

    from adapters import AdapterTrainer

    model = build_model()
    generator = torch.Generator().manual_seed(11)
    # One global batch is the whole data set, so every step sees the same examples in any order.
    data = [
        {
            "input_ids": torch.randint(3, 100, (6,), generator=generator),
            "attention_mask": torch.ones(6, dtype=torch.long),
            "labels": torch.tensor(i % 3),
        }
        for i in range(GLOBAL_BATCH)
    ]
    args = TrainingArguments(
        output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=STEPS,
        learning_rate=0.5,
        max_grad_norm=0.0,
        # BertForSequenceClassification's loss is a per-batch mean that ignores num_items_in_batch; with
        # the default (True) the Trainer multiplies it by the world size, doubling the gradient here.
        average_tokens_across_devices=False,
        optim="sgd",
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        seed=3,
    )
    trainer = AdapterTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return model, trainer


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def worker(output_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    world = int(os.environ["WORLD_SIZE"])
    model, trainer = train(output_dir, GLOBAL_BATCH // world)
    ddp = trainer.model_wrapped
    assert isinstance(ddp, DistributedDataParallel), type(ddp)
    assert dist.get_backend() == "gloo"
    # The parameters DDP's reducer all-reduces: exactly the trainable ones (adapter and classifier).
    synced = {id(p) for p in ddp._build_params_for_reducer()[0]}
    names = {id(p): n for n, p in model.named_parameters()}
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}
    assert synced == trainable_ids, sorted(names[i] for i in synced ^ trainable_ids)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert sorted({names[i].split(".")[0] for i in synced}) == ["bert", "classifier"]
    assert all(".loras.task." in names[i] for i in synced if names[i].startswith("bert."))
    trainer.save_model(str(Path(output_dir) / "final"))  # every rank calls it; only rank 0 writes
    if int(os.environ["RANK"]) == 0:
        torch.save(trainable(model), Path(output_dir) / "weights.pt")
    dist.barrier()
    # Without this, gloo's worker threads can still be joinable when the interpreter exits, and the
    # C++ runtime aborts the process ("terminate called without an active exception", SIGABRT).
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(script: str, *args: str) -> subprocess.Popen:
    """``script`` under ``torchrun --nproc_per_node 2`` on a free local port; stdout and stderr go to one pipe."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        script,
        *args,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_torchrun(launch: subprocess.Popen) -> None:
    """End a launch of :func:`start_torchrun` that still runs (a worker stuck in a collective, say).

    SIGTERM, not SIGKILL: torchrun passes it on to its workers, which run in sessions of their own
    and would outlive a killed torchrun.
    """
    if launch.poll() is None:
        launch.terminate()
        try:
            launch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            launch.kill()


@pytest.mark.distributed
def test_torchrun_two_processes_match_one_process(tmp_path):
    # The launch runs while this process trains the one-process baseline.
    launch = start_torchrun(__file__, str(tmp_path / "ddp"))
    try:
        single, _ = train(str(tmp_path / "single"), GLOBAL_BATCH)
        output, _ = launch.communicate(timeout=120)
    finally:
        stop_torchrun(launch)
    assert launch.returncode == 0, output[-4000:]
    distributed = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    head = load_file(tmp_path / "ddp" / "final" / "head.safetensors")
    assert torch.equal(head["classifier.weight"], distributed["classifier.weight"])
    assert (tmp_path / "ddp" / "final" / "task" / "adapter.safetensors").is_file()
    expected = trainable(single)
    assert distributed.keys() == expected.keys()
    start = trainable(build_model())
    for key, value in expected.items():
        assert (value - start[key]).abs().max() > 0.05, f"{key} barely trained: the comparison would prove little"
        # Summation order differs (4 + 4 examples vs 8), and three SGD steps at lr 0.5 carry each step's rounding
        # into the next gradients (measured: up to ~250 ulps of the weights' scale): 2048 ulps, still hundreds of
        # times below the training's movement.
        assert_close(distributed[key], value, ulps=2048, msg=key)


if __name__ == "__main__":
    worker(sys.argv[1])
    # Everything is written and every rank passed the barrier. Leave without the C++ runtime's
    # teardown: a background thread of gloo or the TCP store still joinable there aborts the
    # process now and then ("terminate called without an active exception", SIGABRT), even after
    # destroy_process_group, which turns a finished run into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
