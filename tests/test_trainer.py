"""AdapterTrainer: checkpoints hold only adapters and the trainable head; resume and best-model restore them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_classifier
from safetensors.torch import load_file
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback, TrainingArguments

import adapters
from adapters import AdapterError, AdapterLoadError, AdapterTrainer, Seq2SeqAdapterTrainer
from adapters.testing import assert_close, tolerance
from adapters.training import CheckpointKind, checkpoint_items, register_checkpoint_kind
from adapters.training import checkpoint as ckpt

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def adapted_model(config: str = "seq_bn", train: bool = True) -> torch.nn.Module:
    model = tiny_bert_classifier(**NO_DROPOUT)
    adapters.init(model)
    model.add_adapter("task", config=config)
    if train:
        model.train_adapter("task")
    return model


def dataset(n: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        {
            "input_ids": torch.randint(3, 100, (6,), generator=generator),
            "attention_mask": torch.ones(6, dtype=torch.long),
            "labels": torch.tensor(i % 3),
        }
        for i in range(n)
    ]


def training_args(output_dir: Path, cls: type = TrainingArguments, **overrides) -> TrainingArguments:
    options = dict(
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        learning_rate=5e-2,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        logging_strategy="no",
        seed=7,
    )
    return cls(str(output_dir), **{**options, **overrides})


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def adapter_weights(model: torch.nn.Module, name: str = "task") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.adapters_state.parameters_of(name)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The very values: weights saved and loaded back, or left alone by a refused load."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two training runs that should end at the same weights: equal up to rounding."""
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], msg=key)


def test_checkpoint_holds_only_adapters_and_head(tmp_path):
    model = adapted_model(train=False)
    model.add_adapter("unused")  # frozen and inactive: not part of the training, not saved
    model.train_adapter("task")
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset())
    trainer.train()

    checkpoint = tmp_path / "checkpoint-4"
    files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert files == {
        "task/adapter_config.json",
        "task/adapter.safetensors",
        # save_adapter's folder: with the static head, as the reference's trainer saves it
        "task/head_config.json",
        "task/model_head.safetensors",
        "head.safetensors",
        "adapters_checkpoint.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.bin",
    }
    assert set(load_file(checkpoint / "head.safetensors")) == {"classifier.weight", "classifier.bias"}
    manifest = json.loads((checkpoint / "adapters_checkpoint.json").read_text())
    assert manifest["items"] == [{"kind": "adapter", "name": "task", "folder": "task", "trainable": True}]

    # The adapter folder is a plain save_adapter() folder: a fresh model loads it.
    fresh = tiny_bert_classifier(**NO_DROPOUT)
    adapters.init(fresh)
    assert fresh.load_adapter(str(checkpoint / "task")) == "task"
    assert_same(adapter_weights(fresh), adapter_weights(model))


def test_save_model_writes_adapters_not_the_model(tmp_path):
    model = adapted_model(config="lora")
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path, max_steps=1, save_strategy="no"))
    trainer.save_model(str(tmp_path / "final"))
    names = sorted(p.name for p in (tmp_path / "final").iterdir())
    assert names == ["adapters_checkpoint.json", "head.safetensors", "task", "training_args.bin"]


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    model = adapted_model()
    AdapterTrainer(model=model, args=training_args(tmp_path / "a"), train_dataset=dataset()).train()
    uninterrupted = trained_state(model)

    resumed = adapted_model()
    before = {n: id(p) for n, p in resumed.named_parameters()}
    trainer = AdapterTrainer(model=resumed, args=training_args(tmp_path / "b"), train_dataset=dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    assert_states_close(trained_state(resumed), uninterrupted)
    # Restored in place: the optimizer's parameters are the model's.
    assert {n: id(p) for n, p in resumed.named_parameters()} == before


def test_resume_adds_adapters_the_model_lacks(tmp_path):
    model = adapted_model()
    AdapterTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=dataset()).train()

    fresh = tiny_bert_classifier(**NO_DROPOUT)
    adapters.init(fresh)
    fresh.freeze_model(True)
    assert ckpt.load_checkpoint(fresh, tmp_path / "checkpoint-2") == ["task"]
    assert all(p.requires_grad for _, p in fresh.adapters_state.parameters_of("task"))
    assert_same(trained_state(fresh), trained_state(model))


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    scores = iter([1.0, 3.0, 2.0])  # best at the second evaluation: step 2
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = trained_state(model)

    model = adapted_model(config="lora")
    args = training_args(
        tmp_path,
        max_steps=3,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=dataset(),
        eval_dataset=dataset(4),
        compute_metrics=lambda _: {"score": next(scores)},
        callbacks=[Snapshot()],
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    with pytest.raises(AssertionError):  # not merely other rounding: another step's weights
        assert_states_close(trained_state(model), snapshots[3])
    assert_same(trained_state(model), snapshots[2])


def test_refuses_a_model_whose_body_is_trainable(tmp_path):
    model = adapted_model(train=False)
    model.set_active_adapters("task")  # active, but the body was never frozen
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset())
    with pytest.raises(AdapterError, match=r"train_adapter\(name\).*allow_trainable_base=True"):
        trainer.train()


def test_allow_trainable_base_trains_and_saves_the_body(tmp_path):
    model = adapted_model(train=False)
    model.set_active_adapters("task")
    trainer = AdapterTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=dataset(), allow_trainable_base=True
    )
    trainer.train()
    head = load_file(tmp_path / "checkpoint-2" / "head.safetensors")
    assert "bert.encoder.layer.0.attention.self.query.weight" in head
    assert not any(".adapters." in key for key in head)  # the adapter is saved on its own


def test_refuses_without_active_adapters_or_adapters_init(tmp_path):
    model = adapted_model()
    model.set_active_adapters(None)
    with pytest.raises(AdapterError, match="no active adapter setup"):
        AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset()).train()
    plain = tiny_bert_classifier()
    with pytest.raises(AdapterError, match=r"adapters.init\(model\)"):
        AdapterTrainer(model=plain, args=training_args(tmp_path), train_dataset=dataset()).train()


def test_trainable_embeddings_are_allowed_and_saved(tmp_path):
    model = adapted_model(train=False)
    model.train_adapter("task", train_embeddings=True)
    AdapterTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=dataset()).train()
    head = load_file(tmp_path / "checkpoint-2" / "head.safetensors")
    assert set(head) == {"bert.embeddings.word_embeddings.weight", "classifier.weight", "classifier.bias"}


def test_resume_with_another_config_is_refused(tmp_path):
    model = adapted_model(config="seq_bn")
    AdapterTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=dataset()).train()
    other = adapted_model(config="lora")
    before = trained_state(other)
    with pytest.raises(AdapterLoadError, match="another config"):
        ckpt.load_checkpoint(other, tmp_path / "checkpoint-2")
    assert_same(trained_state(other), before)


def test_reference_library_checkpoint_layout_loads(tmp_path):
    # The reference trainer writes adapter folders only: no manifest, no head.safetensors.
    model = adapted_model()
    with torch.no_grad():
        for _, param in model.adapters_state.parameters_of("task"):
            param.add_(0.5)
    model.save_adapter(tmp_path / "checkpoint-9" / "task", "task")
    target = adapted_model()
    assert ckpt.load_checkpoint(target, tmp_path / "checkpoint-9") == ["task"]
    assert_same(adapter_weights(target), adapter_weights(model))
    with pytest.raises(AdapterLoadError, match="No adapters in the checkpoint"):
        ckpt.load_checkpoint(target, tmp_path)


def test_a_registered_kind_is_saved_loaded_and_kept_out_of_head_weights(tmp_path, monkeypatch):
    # How AdapterFusion and flexible heads plug in: a kind owning some trainable parameters.
    model = adapted_model()
    model.extra_block = torch.nn.Linear(2, 2)  # stands for a fusion layer
    calls = []

    def save(model, folder, name, state_dict):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.extra_block.state_dict(), folder / "block.pt")
        calls.append(("save", name))

    def load(model, folder, name):
        model.extra_block.load_state_dict(torch.load(folder / "block.pt", weights_only=True))
        calls.append(("load", name))
        return False

    monkeypatch.setattr(ckpt, "_KINDS", dict(ckpt._KINDS))  # keep the registration local to this test
    register_checkpoint_kind(
        CheckpointKind(
            kind="test_block",
            names_to_save=lambda m: ["blk"],
            parameters=lambda m, name: m.extra_block.named_parameters(prefix="extra_block"),
            save=save,
            load=load,
            folder=lambda name: f"block_{name}",
        )
    )
    assert [(k.kind, n) for k, n in checkpoint_items(model)] == [("adapter", "task"), ("test_block", "blk")]
    ckpt.save_checkpoint(model, tmp_path)
    assert set(load_file(tmp_path / "head.safetensors")) == {"classifier.weight", "classifier.bias"}
    assert (tmp_path / "block_blk" / "block.pt").is_file()
    ckpt.load_checkpoint(model, tmp_path)
    assert calls == [("save", "blk"), ("load", "blk")]


def test_seq2seq_adapter_trainer_saves_adapters(tmp_path):
    model = adapted_model(config="lora")
    trainer = Seq2SeqAdapterTrainer(
        model=model, args=training_args(tmp_path, cls=Seq2SeqTrainingArguments, max_steps=2), train_dataset=dataset()
    )
    assert isinstance(trainer, Seq2SeqTrainer) and isinstance(trainer, AdapterTrainer)
    trainer.train()
    assert (tmp_path / "checkpoint-2" / "task" / "adapter.safetensors").is_file()
    assert not (tmp_path / "checkpoint-2" / "model.safetensors").exists()


def test_import_adapters_does_not_import_the_trainer():
    code = "import sys, adapters; print('transformers.trainer' in sys.modules, 'adapters.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- AdapterFusion's value regularization -----------------------------------------------------------
def fusion_model(config: object = "dynamic") -> torch.nn.Module:
    model = tiny_bert_classifier(**NO_DROPOUT)
    adapters.init(model)
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"], config=config)
    model.train_adapter_fusion(adapters.Fuse("a", "b"))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():  # move the value matrices off the identity: the term is then not zero
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def value_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if p.requires_grad and ".value." in n]


def by_hand_regularization(model: torch.nn.Module) -> torch.Tensor:
    # AdapterFusion (Pfeiffer et al., 2021): 0.01 * sum over layers of ||I - V||_F^2
    return sum(0.01 * (torch.eye(v.shape[0]) - v).pow(2).sum() for v in value_matrices(model))


def batch_of(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def test_trainer_optimizes_task_loss_plus_fusion_value_regularization(tmp_path):
    model = fusion_model()
    assert len(value_matrices(model)) == 2  # one fusion layer (output adapter) per layer
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset())
    inputs = batch_of(dataset(4))
    model.train()
    expected = model(**inputs).loss + by_hand_regularization(model)
    assert by_hand_regularization(model).item() > 1e-3
    expected.backward()
    expected_grads = [v.grad.clone() for v in value_matrices(model)]
    model.zero_grad()

    trainer.current_gradient_accumulation_steps = 1  # set by train() before each step
    loss = trainer.training_step(model, inputs)  # forward, loss, backward: what the optimizer steps on
    assert_close(loss, expected.detach())
    for grad, want in zip((v.grad for v in value_matrices(model)), expected_grads, strict=True):
        assert_close(grad, want)

    model.eval()  # evaluation losses stay task losses
    task_only = model(**inputs).loss
    assert_close(trainer.compute_loss(model, inputs), task_only)


def test_no_regularization_without_the_config_flag(tmp_path):
    config = adapters.AdapterFusionConfig.load("dynamic", regularization=False)
    model = fusion_model(config)
    trainer = AdapterTrainer(model=model, args=training_args(tmp_path), train_dataset=dataset())
    inputs = batch_of(dataset(4))
    model.train()
    assert_close(trainer.compute_loss(model, inputs), model(**inputs).loss)
    static = fusion_model("static")  # no value matrix at all
    trainer = AdapterTrainer(model=static, args=training_args(tmp_path), train_dataset=dataset())
    static.train()
    assert_close(trainer.compute_loss(static, inputs), static(**inputs).loss)


class _Grads(TrainerCallback):
    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append([v.grad.clone() for v in value_matrices(model)])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_regularization_counts_once_per_optimizer_step(tmp_path, accumulation):
    # The same run with and without the term: the accumulated gradients differ by the term's gradient once.
    grads, reg_grads = {}, []
    for regularize in (True, False):
        model = fusion_model(adapters.AdapterFusionConfig.load("dynamic", regularization=regularize))
        if regularize:
            by_hand_regularization(model).backward()
            reg_grads = [v.grad.clone() for v in value_matrices(model)]
            model.zero_grad()
        callback = _Grads()
        args = training_args(
            tmp_path / str(regularize), max_steps=1, gradient_accumulation_steps=accumulation, save_strategy="no"
        )
        trainer = AdapterTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[callback])
        trainer.train()
        grads[regularize] = callback.grads[0]
    for with_term, without, term in zip(grads[True], grads[False], reg_grads, strict=True):
        # The task gradients cancel in the difference: their rounding is of their scale, not of the term's.
        atol = max(tolerance(grad) for grad in (with_term, without, term))
        torch.testing.assert_close(with_term - without, term, rtol=0, atol=atol)
