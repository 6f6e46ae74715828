"""The generation task: answer-only loss, truncation, left-padded generation, stop strings, data, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tunelab.cli import main
from tunelab.settings import load_config
from tunelab.data import Example, load_splits
from tunelab.errors import DataError, TrainingError, TunelabError
from tunelab.tasks.generation import IGNORE, GenerationOptions, GenerationTask, cut_at_stop, left_pad
from tunelab.training.batches import Batches
from tunelab.training.loop import predict_scores
from tunelab.tasks import TASKS

EXAMPLES = [Example("repeat red cat", "red cat"), Example("repeat a long list of many words please", "blue")]


def test_labels_are_masked_exactly_on_prompt_and_padding(llama_tokenizer):
    task = GenerationTask()
    features = task.encode(llama_tokenizer, EXAMPLES, max_length=64)
    batch = task.collate(llama_tokenizer, features)
    for i, e in enumerate(EXAMPLES):
        n_prompt = len(task.prompt_ids(llama_tokenizer, e))
        answer = llama_tokenizer(e.label, add_special_tokens=False)["input_ids"] + [llama_tokenizer.sep_token_id]
        n = n_prompt + len(answer)
        labels, ids = batch["labels"][i].tolist(), batch["input_ids"][i].tolist()
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:n] == answer == ids[n_prompt:n]
        assert labels[n:] == [IGNORE] * (len(labels) - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(labels) - n)


def test_truncation_side(llama_tokenizer):
    e = [Example("one two three four five six seven eight nine ten", "red cat")]
    answer = llama_tokenizer("red cat", add_special_tokens=False)["input_ids"] + [llama_tokenizer.sep_token_id]
    left = GenerationTask(GenerationOptions(truncation_side="left")).encode(llama_tokenizer, e, max_length=6)[0]
    assert len(left["input_ids"]) == 6 and left["labels"][-len(answer):] == answer  # the answer is kept whole
    right = GenerationTask(GenerationOptions(truncation_side="right")).encode(llama_tokenizer, e, max_length=6)[0]
    assert len(right["input_ids"]) == 6 and set(right["labels"]) == {IGNORE}  # the answer is cut away


def test_a_batch_without_answer_tokens_is_an_error_not_a_zero_loss(llama_tokenizer):
    task = GenerationTask(GenerationOptions(truncation_side="right"))
    batches = Batches(task, llama_tokenizer, [Example("one two three four five six seven eight", "red cat")], [], 4)
    with pytest.raises(TrainingError, match="every answer token .* truncated away.*raise data.max_length or set "
                                            "generation.truncation_side: left"):
        next(batches.iterate(8))


@pytest.mark.parametrize("answer_logits_only", [False, True])
def test_loss_is_the_mean_answer_token_loss(llama_tokenizer, causal_lm, answer_logits_only):
    task = GenerationTask()
    if answer_logits_only:
        task.bind(causal_lm)  # the tiny Llama takes `logits_to_keep`: only answer positions get logits
    assert task.answer_logits_only == answer_logits_only
    examples = EXAMPLES + [Example("repeat sun", "sun moon tree dog")]
    _, loss = predict_scores(causal_lm, Batches(task, llama_tokenizer, examples, [], 64), 2, "fp32", torch.device("cpu"),
                             keep_outputs=False)
    total, count = 0.0, 0
    for f in task.encode(llama_tokenizer, examples, 64):  # one at a time, no padding: the hand-computed value
        with torch.no_grad():
            logits = causal_lm(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
        target = torch.tensor(f["labels"][1:])
        keep = target != IGNORE
        total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    assert loss == pytest.approx(total / count, rel=1e-5)
    metrics = task.metrics(task.outputs(causal_lm, llama_tokenizer, examples, [], max_length=64, batch_size=2,
                                        precision="fp32", device=torch.device("cpu"), with_loss=True)[0],
                           examples, [])
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_logits_are_kept_from_the_batch_s_first_answer_position(llama_tokenizer, causal_lm):
    task = GenerationTask()
    task.bind(causal_lm)
    features = task.encode(llama_tokenizer, EXAMPLES, max_length=64)
    batch = task.collate(llama_tokenizer, features)
    first = min(len(task.prompt_ids(llama_tokenizer, e)) for e in EXAMPLES)  # the shorter prompt's answer start
    width = max(len(f["input_ids"]) for f in features)
    assert batch["logits_to_keep"].tolist() == list(range(first - 1, width))
    assert batch["labels"].shape == (2, width - first + 1) and (batch["labels"][:, 0] == IGNORE).all()
    with torch.no_grad():
        assert causal_lm(**batch).logits.shape[1] == width - first + 1


def test_generation_pads_on_the_left_and_batching_changes_nothing(llama_tokenizer, causal_lm):
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    task = GenerationTask(GenerationOptions(max_new_tokens=5))
    prompts = [Example("repeat red cat"), Example("a much longer prompt with many more words in it"), Example("x")]
    kw = dict(max_length=64, precision="fp32", device=torch.device("cpu"))
    together = task.generate(causal_lm, llama_tokenizer, prompts, batch_size=3, **kw)
    # Batches of two: the prompts are batched by length ("x" with "repeat red cat"), answers come back in order.
    pairs = task.generate(causal_lm, llama_tokenizer, prompts, batch_size=2, **kw)
    alone = [task.generate(causal_lm, llama_tokenizer, [p], batch_size=1, **kw)[0] for p in prompts]
    assert together == alone == pairs
    assert all(t for t in together)


def test_beam_and_sampling_settings_run(llama_tokenizer, causal_lm):
    kw = dict(max_length=64, batch_size=2, precision="fp32", device=torch.device("cpu"))
    beams = GenerationTask(GenerationOptions(max_new_tokens=3, num_beams=3)).generate(causal_lm, llama_tokenizer,
                                                                                    EXAMPLES, **kw)
    sampler = GenerationTask(GenerationOptions(max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9), seed=1)
    assert len(beams) == 2
    assert sampler.generate(causal_lm, llama_tokenizer, EXAMPLES, **kw) == sampler.generate(causal_lm, llama_tokenizer,
                                                                                     EXAMPLES, **kw)


def test_repetition_settings_reach_generate(llama_tokenizer, causal_lm, monkeypatch):
    kw = dict(max_length=64, batch_size=2, precision="fp32", device=torch.device("cpu"))
    seen = []
    generate = causal_lm.generate
    monkeypatch.setattr(causal_lm, "generate", lambda **a: seen.append(a["generation_config"]) or generate(**a))
    task = GenerationTask(GenerationOptions(max_new_tokens=12, no_repeat_ngram_size=2, repetition_penalty=1.3))
    assert len(task.generate(causal_lm, llama_tokenizer, EXAMPLES, **kw)) == 2
    assert (seen[0].no_repeat_ngram_size, seen[0].repetition_penalty) == (2, 1.3)


def test_stop_strings_cut_the_output(llama_tokenizer, causal_lm):
    assert cut_at_stop("red cat\nuser: more", ["\n", "user:"]) == "red cat"
    assert cut_at_stop(" red cat ", []) == "red cat"
    assert cut_at_stop("abc STOP def", ["zzz", "STOP", "c"]) == "ab"
    kw = dict(max_length=64, batch_size=2, precision="fp32", device=torch.device("cpu"))
    full = GenerationTask(GenerationOptions(max_new_tokens=6)).generate(causal_lm, llama_tokenizer, EXAMPLES, **kw)
    stop = full[0].split()[1]  # the second generated word
    cut = GenerationTask(GenerationOptions(max_new_tokens=6, stop=[stop])).generate(causal_lm, llama_tokenizer,
                                                                                  EXAMPLES, **kw)
    assert cut[0] == full[0][:full[0].find(stop)].strip()


def test_prompts_use_the_chat_template_when_there_is_one(llama_tokenizer):
    e = Example("hello")
    assert GenerationTask(GenerationOptions(template="Say:\n{source}")).prompt_text(llama_tokenizer, e) == "Say:\nhello\n"
    with pytest.raises(TunelabError, match="chat_template` is on but the model's tokenizer has no chat template"):
        GenerationTask(GenerationOptions(chat_template="on")).prompt_text(llama_tokenizer, e)
    llama_tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert GenerationTask().prompt_text(llama_tokenizer, e) == "<user>hello<assistant>"
    turns = Example("hi", "x", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert GenerationTask().prompt_text(llama_tokenizer, turns) == "<system>be brief<user>hi<assistant>"
    assert GenerationTask(GenerationOptions(chat_template="off")).prompt_text(llama_tokenizer, turns) == \
        "system: be brief\nuser: hi\nassistant:\n"


def test_messages_and_source_target_files(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config({"task": "generation", "model": "smollm2-135m", "data": {"source": str(path)}})
    splits = load_splits(cfg.data, TASKS.get("generation"))
    e = splits.train[0]
    assert e.messages == [{"role": "user", "content": e.text}] and e.label == e.text.replace("hi", "hello")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" + json.dumps(rows[0]))
    with pytest.raises(DataError, match=r"bad.jsonl line 1: the last message must be the answer"):
        load_splits(load_config({"task": "generation", "model": "smollm2-135m", "data": {"source": str(bad)}}).data,
                    TASKS.get("generation"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("en,fr\n" + "\n".join(f"word {i},mot {i}" for i in range(20)))
    cfg = load_config({"task": "generation", "model": "smollm2-135m",
                       "data": {"source": str(pairs), "columns": {"source": "en", "target": "fr"}}})
    e = load_splits(cfg.data, TASKS.get("generation")).test[0]
    assert e.label == e.text.replace("word", "mot")


def test_a_file_of_source_target_columns_needs_no_column_mapping(tmp_path):
    """As a `messages` file is recognised by its column, so is a file of `source`/`target` pairs: the README's
    translation layout must not need `data.columns` (nor fail on `predict`, which takes no config)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"source": f"word {i}", "target": f"mot {i}"}) for i in range(20)))
    cfg = load_config({"task": "generation", "model": "smollm2-135m", "data": {"source": str(pairs)}})
    e = load_splits(cfg.data, TASKS.get("generation")).train[0]
    assert e.text.startswith("word") and e.label == e.text.replace("word", "mot")
    prompts_only = tmp_path / "in.jsonl"
    prompts_only.write_text(json.dumps({"source": "word 1"}) + "\n")
    from tunelab.data import rows_to_examples
    from tunelab.data.files import read_rows
    assert [x.text for x in rows_to_examples(read_rows(prompts_only), cfg.data, TASKS.get("generation"), need_label=False)] == ["word 1"]
    neither = tmp_path / "neither.jsonl"
    neither.write_text(json.dumps({"text": "word 1"}) + "\n")
    with pytest.raises(DataError, match=r"neither.jsonl: no column 'prompt' \(columns: text\); name it `prompt` "
                                        r"\(or `source`\), or set data.columns.prompt"):
        rows_to_examples(read_rows(neither), cfg.data, TASKS.get("generation"), need_label=False)


def test_train_eval_predict_from_the_cli(tiny_generation_config, tmp_path, capsys):
    import yaml
    cfg_path = tmp_path / "gen.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_generation_config("lora")))
    assert main(["train", str(cfg_path), "name=gen"]) == 0
    run = tmp_path / "runs" / "gen"
    for name in ("metrics.json", "history.jsonl", "predictions.jsonl", "config.yaml", "model"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"chrf", "bleu", "exact_match", "f1", "perplexity", "loss"} <= set(metrics["test"])
    row = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    assert list(row) == ["prompt", "reference", "prediction"]
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["chrf"] == pytest.approx(metrics["test"]["chrf"])
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "repeat red cat"}) + "\n")
    assert main(["predict", str(run), "--input", str(inputs), "--output", str(tmp_path / "out.jsonl")]) == 0
    out = json.loads((tmp_path / "out.jsonl").read_text())
    assert set(out) == {"prompt", "prediction"}
