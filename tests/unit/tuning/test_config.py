"""TuneConfig: defaults per method, ranges (400 naming the parameter), OpenAI hyperparameter mapping."""

from __future__ import annotations

import pytest

from atelier.errors import InvalidInput
from atelier.tuning.config import TuneConfig


def test_lora_defaults():
    c = TuneConfig()
    assert (c.type, c.total_training_epochs, c.training_batch_size, c.learning_rate) == ("lora", 3, 8, 1e-3)
    assert (c.early_stopping_patience, c.early_stopping_threshold) == (15, 1e-4)
    assert c.log_model_metrics_interval_in_steps == 10 and c.checkpoint_interval == 10
    assert (c.lora_r, c.lora_alpha) == (8, 16)
    assert c.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert c.feedforward_modules == ()
    assert (c.validation_split, c.gradient_accumulation_steps, c.max_steps) == (0.2, 1, None)


def test_tfew_defaults():
    c = TuneConfig(type="tfew")
    assert c.learning_rate == 1e-2
    assert c.target_modules == ("k_proj", "v_proj", "down_proj")
    assert c.feedforward_modules == ("down_proj",)


def test_alpha_follows_rank_unless_given():
    assert TuneConfig(lora_r=32).lora_alpha == 64
    assert TuneConfig(lora_r=32, lora_alpha=8).lora_alpha == 8


def test_checkpoint_interval_defaults_to_metrics_interval():
    assert TuneConfig(log_model_metrics_interval_in_steps=7).checkpoint_interval == 7
    assert TuneConfig(log_model_metrics_interval_in_steps=7, checkpoint_interval_in_steps=3).checkpoint_interval == 3


def test_dump_round_trips():
    c = TuneConfig.from_request({"type": "tfew", "total_training_epochs": 5, "text_template": "Q: {q}\nA: {a}"})
    assert TuneConfig.model_validate(c.model_dump(mode="json")) == c


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "prefix"),
        ("total_training_epochs", 0),
        ("training_batch_size", 0),
        ("learning_rate", 0),
        ("learning_rate", 2.0),
        ("early_stopping_patience", -1),
        ("early_stopping_threshold", -0.1),
        ("log_model_metrics_interval_in_steps", 0),
        ("lora_r", 0),
        ("lora_r", 65),
        ("lora_alpha", 129),
        ("lora_dropout", 1.5),
        ("validation_split", 0.9),
        ("gradient_accumulation_steps", 0),
        ("lr_scheduler", "step"),
        ("warmup_ratio", 0.9),
        ("max_steps", 0),
        ("seed", -1),
        ("target_modules", []),
        ("target_modules", ["q_proj; rm -rf"]),
        ("target_modules", ["q_proj", "q_proj"]),
        ("total_training_epochs", "3"),
        ("total_training_epochs", True),
        ("learning_rate", "0.001"),
        ("text_template", "{question}"),
        ("text_template", "Q: {q!r} {a}"),
        ("no_such_field", 1),
    ],
)
def test_out_of_range_or_unknown_names_the_parameter(field, value):
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request({field: value})
    assert err.value.param == f"training_config.{field}"


def test_feedforward_modules_must_be_targets():
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request({"type": "tfew", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]})
    assert err.value.param == "training_config.feedforward_modules"


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [("tfew", "lora_r", 4), ("tfew", "lora_alpha", 4), ("tfew", "lora_dropout", 0.0), ("lora", "feedforward_modules", ["o_proj"])],
)
def test_settings_of_the_other_method_are_refused(method, field, value):
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request({"type": method, field: value})
    assert err.value.param == f"training_config.{field}"


def test_openai_hyperparameters_map_onto_oci_names():
    c = TuneConfig.from_request(None, {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2})
    assert (c.total_training_epochs, c.training_batch_size) == (5, 4)
    assert c.learning_rate == pytest.approx(2e-3)
    tfew = TuneConfig.from_request({"type": "tfew"}, {"learning_rate_multiplier": 0.5})
    assert tfew.learning_rate == pytest.approx(5e-3)


def test_auto_means_default():
    c = TuneConfig.from_request({}, {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert c == TuneConfig()


def test_openai_seed_and_equal_duplicates_are_accepted():
    c = TuneConfig.from_request({"total_training_epochs": 4}, {"n_epochs": 4}, seed=7)
    assert (c.total_training_epochs, c.seed) == (4, 7)


@pytest.mark.parametrize(
    ("training_config", "hyper", "param"),
    [
        ({}, {"n_epochs": 0}, "hyperparameters.n_epochs"),
        ({}, {"n_epochs": 51}, "hyperparameters.n_epochs"),
        ({}, {"batch_size": 1000}, "hyperparameters.batch_size"),
        ({}, {"batch_size": "eight"}, "hyperparameters.batch_size"),
        ({}, {"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
        ({}, {"learning_rate_multiplier": "x"}, "hyperparameters.learning_rate_multiplier"),
        ({"type": "tfew"}, {"learning_rate_multiplier": 200}, "hyperparameters.learning_rate_multiplier"),
        ({}, {"beta": 0.1}, "hyperparameters.beta"),
        ({"total_training_epochs": 2}, {"n_epochs": 3}, "hyperparameters.n_epochs"),
        ({"learning_rate": 1e-3}, {"learning_rate_multiplier": 2}, "hyperparameters.learning_rate_multiplier"),
    ],
)
def test_bad_openai_hyperparameters_name_the_parameter(training_config, hyper, param):
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request(training_config, hyper)
    assert err.value.param == param


def test_non_object_bodies_are_refused():
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request([1, 2])  # type: ignore[arg-type]
    assert err.value.param == "training_config"
    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request({}, "fast")  # type: ignore[arg-type]
    assert err.value.param == "hyperparameters"


def test_config_is_frozen():
    with pytest.raises(Exception):
        TuneConfig().lora_r = 4  # type: ignore[misc]
