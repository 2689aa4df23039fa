"""TuneConfig.applicable_dump: a job shows and stores only the settings its method uses, and the
worker re-validating that reduced dict trains exactly as with the full config."""

from __future__ import annotations

import pytest

from atelier.tuning.config import ADAPTER_FIELDS, METHOD_FIELDS, TuneConfig

REQUESTS = [
    {"type": "tfew"},
    {"type": "tfew", "total_training_epochs": 5, "target_modules": ["k_proj", "down_proj"], "learning_rate": 0.02},
    {"type": "lora"},
    {"type": "lora", "lora_r": 4, "lora_dropout": 0.0, "text_template": "Q: {q}\nA: {a}"},
    {"type": "full", "learning_rate": 1e-5, "gradient_checkpointing": True},
    {},
]


@pytest.mark.parametrize(
    ("method", "absent", "present"),
    [
        ("tfew", {"lora_r", "lora_alpha", "lora_dropout"}, {"feedforward_modules"}),
        ("lora", {"feedforward_modules"}, {"lora_r", "lora_alpha", "lora_dropout"}),
        ("full", {"lora_r", "lora_alpha", "lora_dropout", "feedforward_modules", "target_modules", "quantize_base"},
         {"learning_rate", "gradient_checkpointing"}),
    ],
)
def test_only_the_settings_of_the_method_are_shown(method, absent, present):
    shown = TuneConfig.from_request({"type": method}).applicable_dump()
    assert not absent & set(shown) and present <= set(shown)
    assert shown["type"] == method and "learning_rate" in shown
    assert bool(shown.get("target_modules")) == (method != "full")


@pytest.mark.parametrize(("field", "value"), [("target_modules", ["q_proj"]), ("quantize_base", "int8"),
                                              ("lora_r", 4), ("feedforward_modules", ["down_proj"])])
def test_full_refuses_the_adapter_settings(field, value):
    from atelier.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        TuneConfig.from_request({"type": "full", field: value})
    assert err.value.param == f"training_config.{field}"
    if field in ("target_modules", "quantize_base"):  # set directly too (others' fields get defaults, unused)
        with pytest.raises(ValueError):
            TuneConfig(type="full", **{field: value})


def test_a_full_config_reads_its_own_dump_back():
    config = TuneConfig(type="full", learning_rate=1e-5)
    assert TuneConfig.model_validate(config.model_dump(mode="json")) == config


def test_full_has_its_own_default_learning_rate():
    assert TuneConfig(type="full").learning_rate == 2e-5
    assert TuneConfig.from_request({"type": "full"}, {"learning_rate_multiplier": 2}).learning_rate == 4e-5
    with pytest.raises(ValueError):
        TuneConfig(type="full").peft_config()


@pytest.mark.parametrize("request_", REQUESTS)
def test_the_reduced_dict_round_trips_to_the_same_config(request_):
    config = TuneConfig.from_request(request_)
    shown = config.applicable_dump()
    again = TuneConfig.model_validate(shown)
    assert again == config  # same training settings, same run fingerprint (full model_dump)
    assert again.model_dump(mode="json") == config.model_dump(mode="json")
    assert again.applicable_dump() == shown
    hidden = {f for m, names in METHOD_FIELDS.items() if m != config.type for f in names}
    assert set(config.model_dump()) - set(shown) == hidden | (set(ADAPTER_FIELDS) if config.type == "full" else set())


def test_every_method_specific_field_is_a_field_and_methods_do_not_share_one():
    named = [f for names in METHOD_FIELDS.values() for f in names]
    assert set(named) <= set(TuneConfig.model_fields) and len(named) == len(set(named))
    assert set(METHOD_FIELDS) == {"lora", "tfew", "full"} and set(ADAPTER_FIELDS) <= set(TuneConfig.model_fields)
