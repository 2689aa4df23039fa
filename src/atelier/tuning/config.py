"""Fine-tuning hyperparameters: one frozen model, OCI's names, OpenAI's names mapped onto them.

``TuneConfig`` is the single description of a job's training settings: the API reads it
from a request (``from_request``), the recipe trains by it, and its ``model_dump`` is saved
beside the adapter; a job stores and shows ``applicable_dump`` (the settings its method
uses). It knows nothing about where the data or the model come from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from atelier.errors import InvalidInput

Method = Literal["lora", "tfew", "full"]

DEFAULT_LEARNING_RATE: dict[str, float] = {"lora": 1e-3, "tfew": 1e-2, "full": 2e-5}
"""Learning rate per method when none is given, chosen on the training splits of bench/finetune.py's two tasks
(``bench/finetune_defaults.py``, finetune_defaults-20261205-210346.json: 64 examples fitted, 48 validated, batch 8,
3 epochs). LoRA r8, validation loss after 3 epochs, topics / headlines: 2e-4 (OCI's default) 1.032 / 4.012,
5e-4 0.360 / 3.419, 1e-3 0.199 / 3.264, 2e-3 0.165 / 3.285; topic accuracy 0.48 at 2e-4, 0.88 at 1e-3.
T-Few: 3e-3 0.342 / 3.495, 1e-2 0.169 / 3.241, 3e-2 0.081 / 3.359 (overfits the headlines by epoch 3), so
OCI's 1e-2 stays. Every run's loss still fell at epoch 3 but one: 3 epochs stay. ``full`` (2e-5) is the usual
full fine-tuning rate, not measured here."""

AUTO_EPOCHS = (3, 100, 25_000, 25)
"""``n_epochs: "auto"``: 3 epochs, but at least 100 and at most 25,000 example passes, within 1..25 epochs (the rule
of OpenAI's fine-tuning cookbook, "Data preparation and analysis for chat model fine-tuning")."""


def auto_epochs(n_examples: int) -> int:
    """The epochs ``"auto"`` trains ``n_examples`` training examples for (``AUTO_EPOCHS``)."""
    target, least, most, cap = AUTO_EPOCHS
    if n_examples * target < least:
        return min(cap, least // max(n_examples, 1))
    if n_examples * target > most:
        return max(1, most // n_examples)
    return target


ADAPTER_METHODS: tuple[str, ...] = ("lora", "tfew")
"""Methods that train an adapter over the frozen base; ``full`` trains every weight of a copy of it."""

FULL_MAX_PARAMS = 1_000_000_000
"""Largest model ``full`` fine-tuning accepts: weights, gradients and AdamW's two moments are 16 bytes a
parameter in float32, checkpoints 12 (16 GB and 12 GB at this size)."""

DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "lora": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "tfew": ("k_proj", "v_proj", "down_proj"),
}
"""Module names adapted per method, for Llama-like models (PEFT's IA3 defaults for T-Few)."""

DEFAULT_FEEDFORWARD_MODULES: tuple[str, ...] = ("down_proj",)
"""T-Few modules whose *input* is scaled (feed-forward); the others have their output scaled."""

METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_r", "lora_alpha", "lora_dropout"),
    "tfew": ("feedforward_modules",),
    "full": (),
}
"""Fields that apply to one method only; every other field applies to every method. A request
setting another method's field is refused, and a job shows none of them (``applicable_dump``)."""

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")


ADAPTER_FIELDS: tuple[str, ...] = ("target_modules", "quantize_base")
"""Fields of every adapter method that ``full`` does not have (it trains all weights, in float)."""


def _other_methods_fields(method: str) -> tuple[str, ...]:
    """The fields that do not apply to ``method``: other methods' own, and the adapters' for ``full``."""
    own = tuple(name for other, names in METHOD_FIELDS.items() if other != method for name in names)
    return own + ADAPTER_FIELDS if method not in ADAPTER_METHODS else own


class TuneConfig(BaseModel):
    """Training settings of one fine-tuning job (numbers are strict: no strings or booleans)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    type: Method = Field(
        "lora", description="Method: 'lora' (low-rank updates), 'tfew' (T-Few, IA3 scaling vectors) or 'full' "
        "(every weight trained, for models up to 1B parameters: the result is a whole model of the tenancy's own)."
    )
    total_training_epochs: int = Field(3, ge=1, le=50, description="Passes over the training examples.")
    training_batch_size: int = Field(8, ge=1, le=256, description="Examples per micro-batch.")
    learning_rate: float = Field(
        None, gt=0, le=1, description="Peak learning rate; 1e-3 for LoRA, 1e-2 for T-Few and 2e-5 for full when not given."
    )  # type: ignore[assignment]  (filled in by _resolve before validation)
    early_stopping_patience: int = Field(
        15, ge=0, le=1000, description="Evaluations without improvement before stopping; 0 disables early stopping."
    )
    early_stopping_threshold: float = Field(
        1e-4, ge=0, le=10, description="Smallest drop of validation loss that counts as an improvement."
    )
    log_model_metrics_interval_in_steps: int = Field(
        10, ge=1, le=10_000, description="Steps between metric events and validations (every step for the first 20)."
    )
    checkpoint_interval_in_steps: int | None = Field(
        None, ge=1, le=10_000, description="Steps between resumable checkpoints; the metrics interval when not given."
    )
    lora_r: int = Field(8, ge=1, le=64, description="LoRA rank r.")
    lora_alpha: int = Field(
        None, ge=1, le=128, description="LoRA alpha; the update is scaled by alpha/r. Default 2*r (a scale of 2)."
    )  # type: ignore[assignment]  (filled in by _resolve before validation)
    lora_dropout: float = Field(0.1, ge=0, le=0.9, description="Dropout on the LoRA input during training.")
    target_modules: tuple[str, ...] = Field(
        None,
        min_length=1,
        max_length=32,
        description="Names (or name suffixes) of the linear modules to adapt; attention projections for LoRA, "
        "k_proj/v_proj/down_proj for T-Few when not given.",
    )  # type: ignore[assignment]
    feedforward_modules: tuple[str, ...] = Field(
        None,
        max_length=32,
        description="T-Few: target modules whose input (not output) is scaled; down_proj when not given.",
    )  # type: ignore[assignment]
    validation_split: float = Field(
        0.2, ge=0, le=0.5, description="Share of the examples held out for validation when no validation file is given."
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the adapter initialisation, data order and dropout.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=64, description="Micro-batches per optimizer step.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay of the learning rate after warmup: linear or cosine to 0, or constant."
    )
    warmup_ratio: float = Field(
        0.05, ge=0, le=0.5, description="Share of the steps spent ramping the learning rate up."
    )
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Upper bound on optimizer steps (training also ends with the epochs)."
    )
    max_grad_norm: float = Field(1.0, ge=0, le=100, description="Gradient norm clipping; 0 disables it.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay on the adapter weights.")
    quantize_base: Literal["none", "int8"] = Field(
        "none", description="QLoRA: train the adapter over the frozen base's linear layers in int8 (weight-only, "
        "torchao) instead of float: about a quarter of their memory. (int4 needs torchao kernels this CPU build "
        "does not have.)",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them: "
        "less memory for long examples, about a third more compute.",
    )
    save_best_adapter: bool = Field(
        True, description="Keep the adapter at the lowest validation loss rather than the last one (with validation)."
    )
    text_template: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Template such as '<prompt>{question}</prompt>{answer}' turning lines with other fields "
        "into prompt/completion (see atelier.tuning.data).",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data):
        """Fill the defaults that depend on other fields: learning rate, alpha, modules."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        method = data.get("type", "lora")
        if method in DEFAULT_LEARNING_RATE and data.get("learning_rate") is None:
            data["learning_rate"] = DEFAULT_LEARNING_RATE[method]
        if method in DEFAULT_TARGET_MODULES and data.get("target_modules") is None:
            data["target_modules"] = DEFAULT_TARGET_MODULES[method]
        elif method not in DEFAULT_TARGET_MODULES and data.get("target_modules", ()) is None:
            del data["target_modules"]  # a full config's own dump says None: it has none
        if data.get("feedforward_modules") is None:
            data["feedforward_modules"] = DEFAULT_FEEDFORWARD_MODULES if method == "tfew" else ()
        if data.get("lora_alpha") is None:
            r = data.get("lora_r", 8)
            data["lora_alpha"] = 2 * r if isinstance(r, int) and not isinstance(r, bool) else r
        return data

    @field_validator("target_modules", "feedforward_modules", mode="before")
    @classmethod
    def _module_names(cls, value):
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            for name in value:
                if not isinstance(name, str) or not _MODULE_NAME.match(name):
                    raise ValueError(f"{name!r} is not a module name (letters, digits, '_' and '.')")
            if len(set(value)) != len(value):
                raise ValueError("module names are repeated")
        return value

    @field_validator("text_template")
    @classmethod
    def _template(cls, value):
        if value is not None:
            from atelier.tuning.data import TextTemplate

            try:
                TextTemplate.parse(value)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("feedforward_modules")
    @classmethod
    def _feedforward_among_targets(cls, value, info: ValidationInfo):
        method, targets = info.data.get("type"), info.data.get("target_modules")
        if method == "tfew" and targets is not None:
            extra = set(value) - set(targets)
            if extra:
                raise ValueError(f"{sorted(extra)} are not among target_modules")
        elif method != "tfew" and value:
            raise ValueError("feedforward_modules applies to tfew only")
        return value

    @model_validator(mode="after")
    def _full_has_no_adapter(self) -> "TuneConfig":
        if self.type == "full" and self.target_modules is not None:
            raise ValueError("target_modules applies to lora and tfew (full trains every weight)")
        if self.type == "full" and self.quantize_base != "none":
            raise ValueError("quantize_base applies to lora and tfew (full trains the float weights themselves)")
        return self

    # ------------------------------------------------------------ derived values

    def peft_config(self):
        """PEFT's config of the adapter these settings train (LoRA or IA3, causal LM)."""
        from peft import IA3Config, LoraConfig

        if self.type not in ADAPTER_METHODS:
            raise ValueError(f"method {self.type!r} trains no adapter")
        if self.type == "lora":
            return LoraConfig(task_type="CAUSAL_LM", r=self.lora_r, lora_alpha=self.lora_alpha,
                              lora_dropout=self.lora_dropout, target_modules=list(self.target_modules), bias="none")
        return IA3Config(task_type="CAUSAL_LM", target_modules=list(self.target_modules),
                         feedforward_modules=list(self.feedforward_modules))

    @property
    def default_learning_rate(self) -> float:
        """The method's default learning rate (what ``learning_rate_multiplier`` multiplies)."""
        return DEFAULT_LEARNING_RATE[self.type]

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints, resolved."""
        return self.checkpoint_interval_in_steps or self.log_model_metrics_interval_in_steps

    def applicable_dump(self) -> dict[str, Any]:
        """The resolved settings that apply to ``type``, JSON-ready: what a job stores and shows.

        The fields of the other methods (``METHOD_FIELDS``) are left out: a T-Few job shows no
        ``lora_r``. ``TuneConfig.model_validate`` of the result gives them their defaults, which
        this method's training never reads; for a config from ``from_request`` (which refuses
        them) it gives back an equal config.
        """
        return self.model_dump(mode="json", exclude=set(_other_methods_fields(self.type)))

    # ------------------------------------------------------------ from an API request

    @classmethod
    def from_request(
        cls,
        training_config: Mapping | None,
        openai_hyperparameters: Mapping | None = None,
        *,
        seed: int | None = None,
    ) -> "TuneConfig":
        """Build a config from a fine-tuning job request.

        OpenAI's hyperparameters map onto OCI's names: ``n_epochs`` → ``total_training_epochs``,
        ``batch_size`` → ``training_batch_size``, ``learning_rate_multiplier`` → ``learning_rate``
        = multiplier × the method's default (1e-3 LoRA, 1e-2 T-Few, 2e-5 full). ``"auto"`` (or absent)
        means the default. A value given under both names must agree.

        Args:
            training_config: Atelier's settings (``training_config`` in the body), OCI's names.
            openai_hyperparameters: OpenAI's ``hyperparameters`` object, if any.
            seed: OpenAI's top-level ``seed``, if any (``training_config.seed`` wins if equal).

        Returns:
            The validated, fully resolved config.

        Raises:
            InvalidInput: an unknown field, a value of the wrong type or out of range, a LoRA
                setting with ``type=tfew`` (or the reverse), or two names disagreeing.
                ``param`` is ``training_config.<name>``, ``hyperparameters.<name>`` or ``seed``.
        """
        if training_config is None:
            training_config = {}
        if not isinstance(training_config, Mapping):
            raise InvalidInput("training_config must be an object", param="training_config")
        if openai_hyperparameters is None:
            openai_hyperparameters = {}
        if not isinstance(openai_hyperparameters, Mapping):
            raise InvalidInput("hyperparameters must be an object", param="hyperparameters")

        data = {k: v for k, v in training_config.items() if v is not None}
        source = {k: f"training_config.{k}" for k in data}
        method = data.get("type", "lora")
        if method in DEFAULT_LEARNING_RATE:
            for name in _other_methods_fields(method):
                if name in data:
                    raise InvalidInput(
                        f"{name} does not apply to training_config.type={method!r}", param=f"training_config.{name}"
                    )

        def put(field: str, value, param: str) -> None:
            if field in data and data[field] != value:
                raise InvalidInput(
                    f"{param} disagrees with training_config.{field}; give one of them", param=param
                )
            data[field] = value
            source[field] = param

        for name, value in openai_hyperparameters.items():
            param = f"hyperparameters.{name}"
            if value is None or value == "auto":
                if name not in ("n_epochs", "batch_size", "learning_rate_multiplier"):
                    raise InvalidInput(f"unknown hyperparameter {name!r}", param=param)
                continue
            if name == "n_epochs":
                put("total_training_epochs", value, param)
            elif name == "batch_size":
                put("training_batch_size", value, param)
            elif name == "learning_rate_multiplier":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
                    raise InvalidInput("learning_rate_multiplier must be a number in (0, 100] or 'auto'", param=param)
                if method not in DEFAULT_LEARNING_RATE:
                    continue  # the type error is reported below
                lr = float(value) * DEFAULT_LEARNING_RATE[method]
                if lr > 1:
                    raise InvalidInput(
                        f"learning_rate_multiplier gives a learning rate of {lr:g}, above 1", param=param
                    )
                if "learning_rate" in data:
                    raise InvalidInput(
                        "give training_config.learning_rate or hyperparameters.learning_rate_multiplier, not both",
                        param=param,
                    )
                put("learning_rate", lr, param)
            else:
                raise InvalidInput(f"unknown hyperparameter {name!r}", param=param)
        if seed is not None:
            put("seed", seed, "seed")

        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else None
            param = source.get(field, f"training_config.{field}") if field else "training_config"
            if err["type"] == "extra_forbidden":
                raise InvalidInput(f"unknown parameter {field!r}", param=param) from None
            msg = err["msg"].removeprefix("Value error, ")
            raise InvalidInput(f"{param}: {msg}", param=param) from None
