"""The search's loop with a stand-in trainer: best trial kept, bad trials pruned, a resumed job keeps its trials."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from atelier.errors import InvalidInput
from atelier.jobs.context import JobStopped
from atelier.jobs.search import run_search
from atelier.tuning.config import TuneConfig
from atelier.tuning.search_space import SearchSpec

BASE = TuneConfig.from_request({"type": "lora", "validation_split": 0.2}).applicable_dump()


@dataclass
class Result:
    final_metrics: dict
    interrupted: bool = False


@dataclass
class Ctx:
    workdir: Path
    stop: bool = False
    stop_reason: str | None = None

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)

    def should_stop(self) -> bool:
        return self.stop


class Trainer:
    """Validation loss falls with the steps towards |log10(lr) + 2| (best at lr = 1e-2); 10 steps."""

    def __init__(self):
        self.steps: list[int] = []  # steps each call ran

    def __call__(self, config, workdir, on_event, should_stop):
        floor = abs(math.log10(config.learning_rate) + 2)
        ran = 0
        for step in range(1, 11):
            if should_stop():
                break
            ran = step
            on_event({"type": "metrics", "step": step, "valid_loss": floor + 1 / step})
        self.steps.append(ran)
        return Result({"valid_loss": floor + 1 / max(ran, 1)}, interrupted=ran < 10)


def test_the_best_trial_is_kept_and_worse_ones_are_pruned(tmp_path):
    trainer, seen = Trainer(), []
    spec = SearchSpec(max_trials=8, learning_rate=(1e-4, 1.0), seed=0)
    outcome = run_search(Ctx(tmp_path), spec, BASE, trainer, lambda n, e: seen.append(n))
    complete = [t for t in outcome.trials if t["state"] == "complete"]
    assert len(outcome.trials) == 8 and outcome.best_trial == min(complete, key=lambda t: t["valid_loss"])["trial"]
    assert outcome.config.learning_rate == pytest.approx(outcome.trials[outcome.best_trial]["params"]["learning_rate_lora"])
    pruned = [t for t in outcome.trials if t["state"] == "pruned"]
    assert pruned and all(trainer.steps[t["trial"]] < 10 for t in pruned)  # stopped before their last step
    assert set(seen) == set(range(8))


def test_a_resumed_search_keeps_its_finished_trials(tmp_path):
    spec = SearchSpec(max_trials=2, learning_rate=(1e-4, 1.0), seed=1)
    first = run_search(Ctx(tmp_path), spec, BASE, Trainer(), lambda n, e: None)
    again = Trainer()
    more = run_search(Ctx(tmp_path), spec.model_copy(update={"max_trials": 4}), BASE, again, lambda n, e: None)
    assert [t["params"] for t in more.trials[:2]] == [t["params"] for t in first.trials]
    assert len(more.trials) == 4 and len(again.steps) in (2, 3)  # 2 new trials (+ the best one's result, if old)


def test_a_stop_request_stops_the_search_and_nothing_finished_is_an_error(tmp_path):
    ctx = Ctx(tmp_path / "a", stop=True, stop_reason="cancel_requested")
    with pytest.raises(JobStopped):
        run_search(ctx, SearchSpec(max_trials=2), BASE, Trainer(), lambda n, e: None)

    def failing(config, workdir, on_event, should_stop):
        for step in range(1, 5):
            on_event({"type": "metrics", "step": step, "valid_loss": 10.0 * step})  # rising: pruned once compared
        return Result({"valid_loss": None})

    outcome = run_search(Ctx(tmp_path / "b"), SearchSpec(max_trials=2), BASE, failing, lambda n, e: None)
    assert outcome.trials  # finished trials with no loss still complete (inf), so this is not an error
    with pytest.raises(InvalidInput):
        run_search(Ctx(tmp_path / "c"), SearchSpec(max_trials=1, timeout_seconds=1e-9), BASE, Trainer(),
                   lambda n, e: None)
