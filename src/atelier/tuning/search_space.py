"""A hyperparameter search's space and budget (``search`` of a fine-tuning job), and its trials' settings.

The space names, per setting, what Optuna may try: ``learning_rate`` log-uniform between two
bounds (default: a tenth to ten times the method's default), ``lora_r``, ``training_batch_size``
and ``type`` among listed values, ``total_training_epochs`` an integer range. Settings not in
the space keep the job's ``training_config``. ``max_trials`` and ``timeout_seconds`` bound it
(the spirit of Olive's ``search_strategy``). Knows Optuna's trial interface, nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from atelier.tuning.config import DEFAULT_LEARNING_RATE, METHOD_FIELDS, TuneConfig


class SearchSpec(BaseModel):
    """Where and how long to search (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_trials: int = Field(8, ge=1, le=100, description="Trials to run at most (pruned ones included).")
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400, description="No new trial after this long.")
    learning_rate: tuple[float, float] | None = Field(
        None, description="Log-uniform bounds; default a tenth to ten times the method's default learning rate.")
    lora_r: list[int] | None = Field(None, min_length=1, max_length=8, description="LoRA ranks to try.")
    training_batch_size: list[int] | None = Field(None, min_length=1, max_length=8, description="Batch sizes to try.")
    total_training_epochs: tuple[int, int] | None = Field(None, description="Epochs: an integer range.")
    type: list[Literal["lora", "tfew"]] | None = Field(None, min_length=1, max_length=2, description="Methods.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the TPE sampler.")

    @field_validator("learning_rate", "total_training_epochs")
    @classmethod
    def _range(cls, bounds):
        if bounds is not None and not 0 < bounds[0] <= bounds[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return bounds

    def suggest(self, trial: Any, base: dict[str, Any]) -> dict[str, Any]:
        """The ``training_config`` of a trial: ``base`` (the job's) with the space's settings drawn by ``trial``."""
        config = dict(base)
        method = trial.suggest_categorical("type", list(self.type)) if self.type else config.get("type", "lora")
        if method != config.get("type", "lora"):
            for name in (n for names in METHOD_FIELDS.values() for n in names):
                config.pop(name, None)
            config.pop("target_modules", None)  # the new method's default modules
        config["type"] = method
        default = DEFAULT_LEARNING_RATE[method]
        low, high = self.learning_rate or (default / 10, default * 10)
        config["learning_rate"] = trial.suggest_float(f"learning_rate_{method}", low, min(high, 1.0), log=True)
        if method == "lora" and self.lora_r:
            config["lora_r"] = trial.suggest_categorical("lora_r", list(self.lora_r))
            config.pop("lora_alpha", None)  # 2 * r
        if self.training_batch_size:
            config["training_batch_size"] = trial.suggest_categorical("training_batch_size",
                                                                      list(self.training_batch_size))
        if self.total_training_epochs:
            config["total_training_epochs"] = trial.suggest_int("total_training_epochs", *self.total_training_epochs)
        return config

    def check(self) -> None:
        """Raise ``InvalidInput`` (param ``search.<name>``) when a value of the space is not a valid setting."""
        from atelier.errors import InvalidInput

        for name in ("lora_r", "training_batch_size", "total_training_epochs"):
            for value in getattr(self, name) or ():
                try:
                    TuneConfig.from_request({name: value})
                except InvalidInput as exc:
                    raise InvalidInput(f"search.{name}: {exc.message}", param=f"search.{name}") from None
        if self.learning_rate and self.learning_rate[1] > 1:
            raise InvalidInput("search.learning_rate: the high bound is above 1", param="search.learning_rate")
