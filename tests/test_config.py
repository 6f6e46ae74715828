"""The config: every shipped file loads, and every kind of mistake is reported in the user's key names."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.settings import load_config
from tunelab.errors import ConfigError
from tunelab.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# configs/distributed/ holds `accelerate launch` configs, not tunelab ones (checked below and run in test_ddp).
LAUNCH = sorted((CONFIGS / "distributed").rglob("*.yaml"))
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in LAUNCH)


def problems_of(source, overrides=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return info.value


def the_problem(source, overrides=None) -> str:
    err = problems_of(source, overrides)
    assert len(err.problems) == 1, err.problems
    return err.problems[0]


# --- (a) shipped configs -------------------------------------------------------------------------------------

def test_shipped_configs_are_found_in_subfolders():
    assert len(SHIPPED) >= 2, f"no configs found under {CONFIGS}"
    assert any(p.parent != CONFIGS for p in SHIPPED), "the walk must be recursive"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.method.name == raw["method"]["name"]
    assert cfg.task == raw.get("task", "classification")
    # A run folder stores `to_dict()` and `tunelab eval` reads it back: the round trip must be exact.
    assert load_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_launch_configs_are_accelerate_configs_that_tunelab_runs(path):
    from accelerate.commands.config.config_args import ClusterConfig
    config = ClusterConfig.from_yaml_file(path)  # accelerate's own reader: an unknown key fails here
    assert config.distributed_type.value in ("MULTI_GPU", "FSDP") and config.num_processes >= 2


def test_every_registered_method_has_a_shipped_config():
    shipped = {yaml.safe_load(p.read_text())["method"]["name"] for p in SHIPPED}
    assert set(METHODS.names()) <= shipped, f"no config under configs/ for {set(METHODS.names()) - shipped}"


# --- (b) unknown keys ----------------------------------------------------------------------------------------

def test_unknown_top_level_key_lists_valid_keys():
    problem = the_problem({"trian": {"epochs": 3}})
    assert problem.startswith("unknown key `trian`; valid keys: ")
    for key in ("task", "model", "data", "method", "train", "output", "name"):
        assert key in problem


def test_unknown_nested_key_is_named_with_its_dotted_path():
    problem = the_problem({"train": {"epoch": 3}})
    assert problem.startswith("unknown key `train.epoch`; valid keys: epochs, batch_size")


def test_unknown_method_option_lists_that_methods_options():
    problem = the_problem({"method": {"name": "lora", "rank": 8}})
    assert problem.startswith("unknown key `method.rank`; valid keys: r, alpha, dropout")


# --- (c) wrong types -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("block, expected", [
    ({"train": {"epochs": "three"}}, "`train.epochs` must be an integer, got 'three'"),
    ({"train": {"epochs": True}}, "`train.epochs` must be an integer, got True"),
    ({"train": {"learning_rate": "fast"}}, "`train.learning_rate` must be a number or null, got 'fast'"),
    ({"train": {"scheduler": "exponential"}}, "`train.scheduler` must be one of: linear, cosine, constant; "
                                              "got 'exponential'"),
    ({"data": {"columns": "text"}}, "`data.columns` must be a mapping of a string, got 'text'"),
])
def test_wrong_type_names_key_expected_type_and_value(block, expected):
    assert the_problem(block) == expected


def test_yaml_exponent_without_dot_is_read_as_a_number():
    # YAML 1.1 reads `5e-4` as a string; a learning rate written that way must still work.
    assert load_config({"train": {"learning_rate": "5e-4"}}).train.learning_rate == pytest.approx(5e-4)


# --- (d) out of range ----------------------------------------------------------------------------------------

def test_negative_learning_rate():
    problem = the_problem({"train": {"learning_rate": -0.001}})
    assert "`train.learning_rate` must be positive" in problem
    assert problem == "`train.learning_rate` must be positive, got -0.001"


@pytest.mark.parametrize("block, expected", [
    ({"train": {"epochs": 0}}, "`train.epochs` must be positive, got 0"),
    ({"train": {"warmup_ratio": 1.5}}, "`train.warmup_ratio` must be at least 0 and below 1, got 1.5"),
    ({"train": {"early_stopping": {"patience": -1}}}, "`train.early_stopping.patience` must be zero or more, got -1"),
    ({"method": {"name": "lora", "r": 0}}, "`method.r` must be positive, got 0"),
    ({"data": {"split": {"validation": 0.5, "test": 0.45}}}, "`data.split` holds out 95% of the examples; "
                                                             "keep validation + test below 90%"),
])
def test_out_of_range(block, expected):
    assert the_problem(block) == expected


# --- (e) unknown method --------------------------------------------------------------------------------------

def test_unknown_method_lists_the_registered_ones():
    problem = the_problem({"method": {"name": "lroa"}})
    assert "unknown method 'lroa'; choose one of: adapter, full, ia3, lora, prompt" in problem


def test_method_that_does_not_support_the_task():
    problem = the_problem({"task": "regression", "method": {"name": "prompt"}})
    assert problem.startswith("method 'prompt' does not support task 'regression'; methods for it: ")
    assert "lora" in problem


# --- (f) several problems in one error -----------------------------------------------------------------------

BROKEN = {
    "task": "classification",
    "extra": 1,
    "train": {"epochs": "three", "learning_rate": -0.001},
    "method": {"name": "lora", "r": 0},
    "data": {"source": "no_such_dataset"},
}


def test_all_problems_are_reported_together():
    err = problems_of(BROKEN)
    assert len(err.problems) == 5, err.problems
    message = str(err)
    assert "\n" not in message
    assert message.startswith("5 problems in the config: ")
    for fragment in ("unknown key `extra`", "`train.epochs` must be an integer", "`train.learning_rate` must be "
                     "positive", "`method.r` must be positive", "'no_such_dataset' is neither a built-in dataset"):
        assert fragment in message
    assert [p for p in err.problems if p in message] == err.problems


def test_cli_reports_config_problems_in_one_line_with_status_2(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(BROKEN))
    assert main(["train", str(path), f"output={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 5 problems in the config: "), captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "runs").exists()


# --- (g) dotted overrides ------------------------------------------------------------------------------------

LORA = CONFIGS / "sentiment" / "lora.yaml"


def test_overrides_switch_method_and_drop_options_that_do_not_apply():
    base = load_config(LORA)
    cfg = load_config(LORA, ["train.epochs=5", "method.name=full"])
    assert cfg.train.epochs == 5
    assert cfg.method.name == "full"
    assert type(cfg.method.options) is METHODS.get("full").Options
    # Everything else in the file is kept.
    assert cfg.data == base.data
    assert cfg.train.early_stopping == base.train.early_stopping
    assert cfg.train.batch_size == base.train.batch_size


def test_switching_method_keeps_options_the_new_method_shares():
    cfg = load_config(LORA, ["method.name=ia3", "method.target_modules=[query, value]"])
    assert cfg.method.name == "ia3"
    assert cfg.method.options.target_modules == ["query", "value"]


def test_an_option_given_on_the_command_line_is_still_checked():
    # Only the file's options are dropped on a switch; an explicit wrong one is an error.
    problem = the_problem(LORA, ["method.name=full", "method.r=4"])
    assert problem == "unknown key `method.r`; valid keys: freeze_layers"


def test_override_values_are_read_as_yaml():
    cfg = load_config(LORA, ["train.learning_rate=0.0005", "data.labels=[negative, positive]", "name=my-run",
                             "train.early_stopping.patience=0"])
    assert cfg.train.learning_rate == pytest.approx(5e-4)
    assert cfg.data.labels == ["negative", "positive"]
    assert cfg.name == "my-run"
    assert cfg.train.early_stopping.patience == 0
    assert cfg.train.early_stopping.metric == "f1"  # a sibling from the file survives


def test_override_without_equals_sign():
    assert the_problem(LORA, ["train.epochs"]) == \
        "override 'train.epochs' must look like key=value, e.g. train.epochs=5"


def test_override_value_that_is_not_yaml_is_a_one_line_error():
    # `{label}` opens a YAML mapping inside an unquoted list: a parser traceback before this.
    problem = the_problem(LORA, ["method.label_templates=[The sentiment is {label}, Sentiment: {label}]"])
    assert problem.startswith("override 'method.label_templates=[The sentiment is {label}, Sentiment: {label}]': "
                              "the value is not valid YAML (expected ',' or ']', but got '{'); quote strings")
    assert "\n" not in problem


def test_overrides_are_validated_like_the_file():
    assert the_problem(LORA, ["train.epochs=-1"]) == "`train.epochs` must be positive, got -1"


def test_override_of_an_option_on_the_method_shorthand():
    cfg = load_config({"method": "lora"}, ["method.r=4"])
    assert cfg.method.name == "lora" and cfg.method.options.r == 4


# --- (h) unknown names list the valid ones -------------------------------------------------------------------

def test_unknown_task():
    assert the_problem({"task": "sumarize"}) == \
        "`task`: unknown task 'sumarize'; choose one of: classification, extractive_qa, generation, regression"


def test_unknown_model_alias():
    problem = the_problem({"model": "bert-tiny"})
    assert problem.startswith("`model`: 'bert-tiny' is neither a built-in alias (")
    assert "minilm" in problem and "smollm2-135m" in problem


def test_unknown_dataset():
    problem = the_problem({"data": {"source": "imdb"}})
    assert problem == ("`data.source`: 'imdb' is neither a built-in dataset (bbc_news, bible_parallel, chatterbot, "
                       "rotten_tomatoes, tunelab_qa) "
                       "nor an existing file or folder")


def test_missing_validation_file(tmp_path):
    missing = tmp_path / "val.csv"
    assert the_problem({"data": {"validation_file": str(missing)}}) == \
        f"`data.validation_file`: file {str(missing)!r} not found"


# --- (i) early-stopping metric -------------------------------------------------------------------------------

def test_early_stopping_metric_of_another_task():
    assert the_problem({"train": {"early_stopping": {"metric": "mse"}}}) == (
        "`train.early_stopping.metric` 'mse' is not a classification metric; choose one of: "
        "f1, accuracy, precision, recall, loss")


def test_early_stopping_metric_for_regression():
    problem = the_problem({"task": "regression", "train": {"early_stopping": {"metric": "f1"}}})
    assert problem.startswith("`train.early_stopping.metric` 'f1' is not a regression metric; choose one of: ")
    assert "mse" in problem


@pytest.mark.parametrize("metric", ["f1", "accuracy", "loss"])
def test_early_stopping_metric_of_the_task_is_accepted(metric):
    assert load_config({"train": {"early_stopping": {"metric": metric}}}).train.early_stopping.metric == metric


# --- task blocks: each task with options contributes its own top-level block ---------------------------------

def test_task_blocks_are_valid_top_level_keys_and_checked_by_their_task():
    assert "extractive_qa, generation" in the_problem({"trian": {}})  # listed among the valid keys
    problem = the_problem({"generation": {"max_new_tokns": 3}})
    assert problem.startswith("unknown key `generation.max_new_tokns`; valid keys: template, chat_template")
    assert the_problem({"extractive_qa": {"doc_stride": 0}}) == "`extractive_qa.doc_stride` must be positive, got 0"
    assert the_problem({"generation": 5}).startswith("`generation` must be a mapping of its options")


def test_task_blocks_round_trip_in_place_after_train():
    cfg = load_config({"task": "generation", "data": {"source": "bible_parallel"}, "model": "smollm2-135m",
                       "generation": {"max_new_tokens": 7, "stop": ["\n"]}})
    assert cfg.task_options["generation"].max_new_tokens == 7
    assert cfg.task_options["extractive_qa"].doc_stride == 32  # every task's block, defaults where not given
    saved = cfg.to_dict()
    keys = list(saved)
    assert keys[keys.index("train") + 1: keys.index("train") + 3] == ["extractive_qa", "generation"]
    assert "task_options" not in saved
    assert load_config(saved).to_dict() == saved


def test_a_new_task_with_options_needs_no_change_outside_its_own_file(monkeypatch, capsys):
    """What `README.md` promises: a task's options are its own dataclass; the config reads, checks, saves and
    documents its block without config.py or settings.py naming it."""
    from dataclasses import dataclass

    from tunelab.tasks import TASKS, task_for
    from tunelab.tasks.classification import ClassificationTask
    from tunelab.typed import option, positive

    @dataclass
    class ShoutOptions:
        volume: int = option(3, "How loud.", positive)

    class ShoutTask(ClassificationTask):
        name = "shout"
        Options = ShoutOptions
        options_doc = "Options of the `shout` task."

        def configure(self, cfg):
            task = ShoutTask()
            task.volume = self.options_in(cfg).volume
            return task

    monkeypatch.setitem(TASKS._items, "shout", ShoutTask())
    cfg = load_config({"task": "shout", "shout": {"volume": 11}})
    assert task_for(cfg).volume == 11
    assert load_config(cfg.to_dict()).task_options["shout"].volume == 11
    assert the_problem({"task": "shout", "shout": {"volume": -1}}) == "`shout.volume` must be positive, got -1"
    assert main(["config"]) == 0
    assert "shout.volume = 3: How loud." in capsys.readouterr().out


def test_output_that_is_a_file_is_a_config_problem_not_a_traceback(tmp_path, capsys):
    """Found by a new user: `output:` naming an existing file ended in FileExistsError and exit 1."""
    taken = tmp_path / "results.txt"
    taken.write_text("mine\n")
    assert the_problem({"output": str(taken)}) == (f"`output`: {taken} is a file, not a folder; give a folder, "
                                                    f"which is created if missing (e.g. runs)")
    assert the_problem({"output": str(taken / "runs")}).startswith(f"`output`: {taken} is a file, not a folder")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output": str(taken)}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "mine\n"  # untouched


def test_compare_output_that_is_a_file_is_refused_before_anything_trains(tmp_path, capsys):
    taken = tmp_path / "comparisons"
    taken.write_text("mine\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({}))
    assert main(["compare", str(config), "--methods", "lora", "--output", str(taken)]) == 2
    assert "`--output`: " in capsys.readouterr().err and taken.read_text() == "mine\n"
