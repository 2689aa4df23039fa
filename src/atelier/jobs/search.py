"""A fine-tuning job with ``search``: trials of training settings chosen by Optuna, the best adapter kept.

Optuna's TPE sampler proposes each trial's settings (``tuning.search_space.SearchSpec``);
the trial trains with the recipe exactly as a plain job does, in its own directory of the
job's work directory, on the job's examples and within the job's cluster units (trials run
one after another in the job). Its validation loss at every metrics interval is reported to
Optuna's median pruner, which stops a trial doing worse than the median of earlier ones at
the same step. The study is journaled in the work directory, so a job resumed after its
worker died keeps the finished trials (a trial cut short is run again). Every trial's metric
events are job events (``data.trial``); the trial with the lowest best validation loss gives
the job's custom model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atelier.errors import InvalidInput
from atelier.jobs.context import JobContext, JobStopped
from atelier.tuning.config import TuneConfig
from atelier.tuning.search_space import SearchSpec

JOURNAL = "search.journal"


@dataclass
class SearchOutcome:
    """The best trial's result and settings, and every trial's summary."""

    result: Any
    config: TuneConfig
    best_trial: int
    trials: list[dict[str, Any]] = field(default_factory=list)


def run_search(ctx: JobContext, spec: SearchSpec, base: dict[str, Any], train_one: Callable[..., Any],
               emit: Callable[[int, dict[str, Any]], None]) -> SearchOutcome:
    """Run the search (see the module docstring).

    Args:
        ctx: The job's context (work directory, stop signal).
        spec: The space and budget.
        base: The job's ``training_config`` (resolved), the settings the space does not draw.
        train_one: ``train_one(config, workdir, on_event, should_stop)`` → the recipe's ``TuneResult``.
        emit: Records a trial's recipe event as a job event: ``emit(trial number, event)``.

    Raises:
        JobStopped: The job was asked to stop (the journal keeps the finished trials).
        InvalidInput: No trial finished (all pruned or failed).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ctx.workdir / JOURNAL)))
    study = optuna.create_study(
        study_name="search", storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )  # fmt: skip
    for cut in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(cut.number, state=optuna.trial.TrialState.FAIL)  # its worker died: run a new trial instead
    deadline = time.monotonic() + spec.timeout_seconds if spec.timeout_seconds else None
    results: dict[int, Any] = {}
    while len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]) < spec.max_trials:
        if deadline is not None and time.monotonic() >= deadline:
            break
        trial = study.ask()
        config = TuneConfig.model_validate(spec.suggest(trial, base))
        pruned = False

        def on_event(event: dict[str, Any], trial=trial) -> None:
            nonlocal pruned
            emit(trial.number, event)
            if event.get("type") == "metrics" and event.get("valid_loss") is not None:
                trial.report(event["valid_loss"], event["step"])
                pruned = pruned or trial.should_prune()

        result = train_one(config, ctx.workdir / f"trial-{trial.number}", on_event,
                           lambda: pruned or ctx.should_stop())
        if ctx.should_stop():
            raise JobStopped(ctx.stop_reason or "stopped")
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        loss = result.final_metrics.get("valid_loss")
        study.tell(trial, loss if loss is not None else float("inf"))
        results[trial.number] = (result, config)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise InvalidInput("no trial of the search finished (every one was pruned or failed)", param="search")
    best = min(finished, key=lambda t: t.value)
    if best.number not in results:  # finished in an earlier attempt of the job: its run directory holds the result
        config = TuneConfig.model_validate(spec.suggest(optuna.trial.FixedTrial(best.params), base))
        results[best.number] = (train_one(config, ctx.workdir / f"trial-{best.number}", lambda e: None,
                                          ctx.should_stop), config)
    summary = [{"trial": t.number, "state": t.state.name.lower(), "params": t.params, "valid_loss": t.value}
               for t in study.trials]
    result, config = results[best.number]
    return SearchOutcome(result, config, best.number, summary)
