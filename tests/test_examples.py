"""The task examples (examples/*.py) end to end on a tiny random BERT and a few rows written here.

No model download and no shared data: each test writes a tokenizer, a random 2-layer BERT and a
handful of rows in the example's file format, runs the example's ``main`` for two optimizer steps
and checks the metrics it reports and the adapter it saves. The metric and data-preparation
functions are checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import conll2003_ner  # noqa: E402
import mrpc_pairs  # noqa: E402
import run_all  # noqa: E402
import smollm2_lora  # noqa: E402
import squad_qa  # noqa: E402
import sst2_classification  # noqa: E402

WORDS = (
    "the a movie film is good bad great awful . , ? who where when what lives in paris john smith works at acme "
    "corp german was born 1990 city of river flows through"
).split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def run(module, model_dir: Path, data_root: Path, out: Path, *extra: str) -> dict:
    argv = ["--data-root", str(data_root), "--model-dir", str(model_dir), "--out", str(out)]
    argv += ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--lr", "1e-2", *extra]
    return module.main(argv)


def check_result(result: dict, metrics: set[str], out: Path, task: str) -> None:
    assert set(result["metrics"]) == metrics
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in result["metrics"].values())
    assert result["steps"] == 2
    assert 0 < result["trainable"] < result["total"]
    saved = out / task / task
    assert (saved / "adapter_config.json").is_file()  # trainer.save_model: the adapter and its head
    assert (saved / "head_config.json").is_file()


def write_tsv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


# -- SST-2 ---------------------------------------------------------------------------------------
def test_sst2_example_trains_and_reports_accuracy(tmp_path, model_dir):
    rows = [f"the movie is {w} . \t{int(w in ('good', 'great'))}" for w in ("good", "bad", "great", "awful") * 3]
    write_tsv(tmp_path / "sst2" / "train.tsv", "sentence\tlabel", rows)
    write_tsv(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel", rows[:5])
    result = run(sst2_classification, model_dir, tmp_path, tmp_path / "out")
    check_result(result, {"accuracy"}, tmp_path / "out", "sst2")
    assert result["eval_examples"] == 5


def test_run_all_runs_the_chosen_examples_and_prints_a_summary(tmp_path, model_dir, capsys):
    rows = [f"the movie is {w} . \t{int(w == 'good')}" for w in ("good", "bad") * 4]
    write_tsv(tmp_path / "sst2" / "train.tsv", "sentence\tlabel", rows)
    write_tsv(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel", rows[:3])
    shared = ["--data-root", str(tmp_path), "--model-dir", str(model_dir), "--out", str(tmp_path / "out")]
    assert run_all.main(["--only", "sst2", "--json", str(tmp_path / "r.json"), "--max-steps", "1", *shared]) == 0
    assert "Summary" in capsys.readouterr().out
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == "SST-2" and result["steps"] == 1
    with pytest.raises(SystemExit):
        run_all.main(["--only", "sts"])


def test_sst2_reader_refuses_another_header(tmp_path):
    write_tsv(tmp_path / "x.tsv", "text\tlabel", ["good\t1"])
    with pytest.raises(ValueError, match="sentence<TAB>label"):
        sst2_classification.read_sst2(tmp_path / "x.tsv")


# -- MRPC ----------------------------------------------------------------------------------------
def test_mrpc_example_trains_and_reports_accuracy_and_f1(tmp_path, model_dir):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [
        f'{i % 2}\t{i}\t{i + 100}\tjohn smith works at "acme corp .\tjohn smith was born in paris {i} .'
        for i in range(10)
    ]
    write_tsv(tmp_path / "mrpc" / "train.tsv", header, rows)
    write_tsv(tmp_path / "mrpc" / "dev.tsv", header, rows[:6])
    result = run(mrpc_pairs, model_dir, tmp_path, tmp_path / "out")
    check_result(result, {"accuracy", "f1"}, tmp_path / "out", "mrpc")


def test_mrpc_f1_is_of_the_paraphrase_class():
    scores = mrpc_pairs.accuracy_and_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    # tp 2, fp 1, fn 1: precision 2/3, recall 2/3
    assert scores == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert mrpc_pairs.accuracy_and_f1([0, 0], [1, 0])["f1"] == 0.0


# -- CoNLL-2003 ----------------------------------------------------------------------------------
CONLL = """-DOCSTART- -X- O O

John NNP B-NP I-PER
Smith NNP I-NP I-PER
works VBZ B-VP O
at IN B-PP O
Acme NNP B-NP I-ORG
Corp NNP I-NP I-ORG
in IN B-PP O
Paris NNP B-NP I-LOC
. . O O

German JJ B-NP I-MISC
John NNP I-NP B-MISC
lives VBZ B-VP O
in IN B-PP O
Paris NNP B-NP I-LOC
"""


def test_conll_reader_skips_docstart_and_converts_iob1_to_iob2(tmp_path):
    (tmp_path / "train.txt").write_text(CONLL, encoding="utf-8")
    sentences = conll2003_ner.read_conll(tmp_path / "train.txt")
    assert [words[:2] for words, _ in sentences] == [["John", "Smith"], ["German", "John"]]
    assert sentences[0][1] == ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O"]
    assert sentences[1][1] == ["B-MISC", "B-MISC", "O", "O", "B-LOC"]  # two adjacent MISC entities


def test_entity_f1_counts_exact_spans():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["I-ORG", "O"]]  # PER too short; I-ORG after nothing starts ORG
    # gold 3 entities; predicted 3 (PER 0-0, LOC, ORG); right 2 (LOC, ORG)
    scores = conll2003_ner.entity_scores(gold, predicted)
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "entity_f1": 2 / 3})
    assert conll2003_ner.entity_scores([["O"]], [["O"]])["entity_f1"] == 0.0


def test_ner_labels_sit_on_first_word_pieces(model_dir):
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    sentences = [(["John", "Smithsonian", "lives"], ["B-PER", "I-PER", "O"])]
    (feature,) = conll2003_ner.encode(sentences, tokenizer, 32)
    words = feature["word_ids"]
    labels = feature["labels"]
    for j, w in enumerate(words):
        first = w is not None and (j == 0 or words[j - 1] != w)
        expected = conll2003_ner.LABELS.index(sentences[0][1][w]) if first else -100
        assert labels[j] == expected


def test_conll_example_trains_and_reports_entity_f1(tmp_path, model_dir):
    folder = tmp_path / "conll2003"
    folder.mkdir()
    (folder / "train.txt").write_text(CONLL * 3, encoding="utf-8")
    (folder / "valid.txt").write_text(CONLL, encoding="utf-8")
    result = run(conll2003_ner, model_dir, tmp_path, tmp_path / "out")
    check_result(result, {"entity_f1", "precision", "recall"}, tmp_path / "out", "ner")


# -- SQuAD ---------------------------------------------------------------------------------------
CONTEXT = (
    "John Smith was born in Paris in 1990. The river flows through the city of Paris. "
    "John Smith works at Acme Corp, a German film company. " * 3
)


def squad_file(path: Path, n: int = 6) -> None:
    questions = [
        ("where was john smith born ?", "Paris", CONTEXT.index("Paris")),
        ("when was john smith born ?", "1990", CONTEXT.index("1990")),
        ("where does john smith work ?", "Acme Corp", CONTEXT.rindex("Acme Corp")),  # in a later window
    ]
    qas = [
        {"id": f"q{i}", "question": "   " + q, "answers": [{"text": a, "answer_start": s}]}
        for i, (q, a, s) in enumerate((questions * n)[:n])
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_qa_training_positions_cover_the_answer_text(tmp_path, model_dir):
    squad_file(tmp_path / "train.json", n=3)
    questions = squad_qa.read_squad(tmp_path / "train.json")
    assert questions[0].question.startswith("where")  # leading spaces dropped
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    enc = squad_qa.tokenize(questions, tokenizer, 48, 16)
    features = squad_qa.train_features(questions, tokenizer, 48, 16)
    assert len(features) > len(questions)  # the context is cut into windows
    found = set()
    for i, feature in enumerate(features):
        question = questions[enc["overflow_to_sample_mapping"][i]]
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            assert end == 0
            continue
        offsets = enc["offset_mapping"][i]
        assert question.context[offsets[start][0] : offsets[end][1]] == question.answers[0]
        found.add(question.id)
    assert found == {q.id for q in questions}  # every answer is labelled in some window


def test_qa_post_processing_picks_the_best_valid_span():
    question = squad_qa.Question("q", "?", "alpha beta gamma", ("beta gamma",), 6)
    # tokens: [CLS] ? [SEP] alpha beta gamma [SEP]; offsets only for the context
    offsets = [None, None, None, (0, 5), (6, 10), (11, 16), None]
    start = torch.tensor([9.0, 0, 0, 1, 5, 0, 0])  # [CLS] scores best but is not in the context
    end = torch.tensor([9.0, 0, 0, 0, 3, 4, 8])  # end at the last [SEP]: not in the context either
    answers = squad_qa.best_answers([question], [(0, offsets)], [{"start_logits": start, "end_logits": end}])
    assert answers == ["beta gamma"]
    too_long = squad_qa.best_answers(
        [question], [(0, offsets)], [{"start_logits": start, "end_logits": end}], max_answer_length=1
    )
    assert too_long == ["beta"]  # 5 + 3 beats alpha..alpha (1 + 0) and gamma (0 + 4)


def test_squad_metrics_are_the_official_ones():
    assert squad_qa.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    question = squad_qa.Question("q", "?", "c", ("the Acme Corp", "Acme"), 0)
    scores = squad_qa.squad_scores(["acme corp.", "Acme Corp in Paris"], [question, question])
    # first: exact after normalization; second: F1 vs "acme corp" = 2 * (2/4 * 2/2) / (2/4 + 2/2) = 2/3
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})


def test_squad_example_trains_and_reports_em_and_f1(tmp_path, model_dir):
    squad_file(tmp_path / "squad" / "train_subset.json")
    squad_file(tmp_path / "squad" / "xquad_en_dev.json", n=3)
    result = run(squad_qa, model_dir, tmp_path, tmp_path / "out", "--max-length", "64", "--doc-stride", "16")
    check_result(result, {"exact_match", "f1"}, tmp_path / "out", "squad")
    assert result["eval_examples"] == 3


# -- SmolLM2 (LoRA and QLoRA) on a tiny random Llama in place of the converted checkpoint ---------------
def test_smollm2_example_trains_lora_and_qlora_merges_and_exports_peft(tmp_path, model_dir):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    checkpoint = tmp_path / "smollm2"  # a folder with config.json: the example skips the GGUF conversion
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["review", "sentiment", "positive", "negative", ":"])
    tokenizer.save_pretrained(checkpoint)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(checkpoint)
    rows = [f"the movie is {w} .\t{int(w in ('good', 'great'))}" for w in ("good", "bad", "great", "awful") * 4]
    write_tsv(tmp_path / "sst2" / "train.tsv", "sentence\tlabel", rows)
    write_tsv(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel", rows[:8])
    argv = ["--cache-dir", str(checkpoint), "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    argv += ["--train-size", "8", "--eval-size", "8", "--steps", "2", "--batch-size", "4", "--model-dir", "ignored"]
    result = smollm2_lora.main(argv)
    assert set(result["metrics"]) == {"accuracy before", "lora accuracy", "qlora accuracy"}
    assert result["steps"] == 4
    lora, qlora = result["runs"]
    assert lora["merge_warning"] is None and "re-quantizes" in qlora["merge_warning"]
    assert lora["accuracy_merged"] == pytest.approx(lora["accuracy_after"], abs=1 / 8)
    for run in (lora, qlora):
        assert run["trainable_parameters"] > 0 and run["last_loss"] == run["last_loss"]
        exported = {p.name for p in Path(run["peft_folder"]).iterdir()}
        assert exported == {"adapter_config.json", "adapter_model.safetensors"}
