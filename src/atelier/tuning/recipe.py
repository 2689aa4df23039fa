"""The fine-tuning recipe: setup → train → evaluate → save_checkpoint → resume, for LoRA, T-Few and full.

One recipe serves the adapter methods through PEFT: LoRA replaces a target linear map by
``x ↦ W₀x + (α/r)·B A x`` (A: r×d_in, B: d_out×r, B = 0 at start), T-Few (IA3) by
``x ↦ l ⊙ W₀x`` (or ``W₀(l ⊙ x)`` for feed-forward modules), ``l = 1`` at start; only A, B
or l are trained. ``full`` trains every weight of a copy of the base model (the base itself
is left as it was) and saves a whole Hugging Face model. The loss is the mean cross-entropy
over completion (assistant) tokens of each optimizer step's examples; prompts carry no loss.

Determinism is what makes resumption exact: the data order of an epoch is a pure function
of ``(seed, epoch)``, the learning rate a pure function of the step, and a checkpoint
holds everything else that evolves (adapter and optimizer tensors, RNG states, position,
early-stopping counters, curve). A run stopped or killed after any step and resumed ends
with the same adapter tensors, bit for bit, as one that never stopped (same machine, same
thread count). This module knows models, tensors and a work directory; nothing of jobs,
storage or tenants.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
import warnings
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from atelier.errors import Conflict, InvalidInput
from atelier.tuning.checkpointing import (
    capture_rng,
    load_rng,
    prune,
    remove_leftovers,
    restore_rng,
    save_rng,
    step_dirs,
    write_dir_atomically,
    write_json_atomically,
)
from atelier.tuning.config import ADAPTER_METHODS, FULL_MAX_PARAMS, TuneConfig
from atelier.tuning.schedule import collate, epoch_order, learning_rate_at
from atelier.tuning.data import Example
from atelier.tuning.labelled_loss import CompletionLoss
from atelier.tuning.metrics import TokenStats
from atelier.tuning.export import sort_module_lists

log = logging.getLogger(__name__)

EVERY_STEP_UNTIL = 20
"""Metric events are sent at every step up to this one, then at each interval."""
KEEP_CHECKPOINTS = 2
"""Complete checkpoints kept in the work directory (the newest ones)."""
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
"""Where ``full`` saves its model (``config.json`` + ``model.safetensors``) in the work directory."""
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class TuneResult:
    """What a finished (or interrupted) training run produced."""

    adapter_dir: Path | None
    """PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``), or for ``full`` a
    Hugging Face model directory (``config.json`` + ``model.safetensors``); None if interrupted."""
    method: str
    """``lora``, ``tfew`` or ``full``."""
    trainable_params: int
    """Parameters trained (the adapter's; all of them for ``full``)."""
    total_params: int
    """Parameters of base model plus adapter."""
    trainable_fraction: float
    """``trainable_params / total_params``."""
    steps: int
    """Optimizer steps done."""
    total_steps: int
    """Optimizer steps planned (epochs × steps per epoch, capped by ``max_steps``)."""
    epochs: float
    """Epochs done (``steps / steps_per_epoch``)."""
    stopped_early: bool
    """Validation loss stopped improving for ``early_stopping_patience`` evaluations."""
    interrupted: bool
    """``should_stop()`` ended the run; calling ``run`` again resumes it."""
    best_step: int | None
    """Step with the lowest validation loss (None without validation)."""
    final_metrics: dict
    """The metric event of the step whose adapter was saved (best or last)."""
    curve: list[dict]
    """Every metric event, in step order."""
    resumed_from_step: int | None = None
    """Checkpoint step this call resumed from, if any."""

    def to_dict(self) -> dict:
        """JSON-ready fields (the adapter path as a string)."""
        out = dataclasses.asdict(self)
        out["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TuneResult":
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["adapter_dir"] = Path(data["adapter_dir"]) if data.get("adapter_dir") else None
        return cls(**data)


@dataclass
class _State:
    """Everything that evolves during training besides tensors (saved as JSON)."""

    step: int = 0
    epoch: int = 0
    """Epoch being trained, from 0."""
    micro: int = 0
    """Next micro-batch of that epoch's order."""
    last_lr: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    pending_report: bool = False
    """The last step's metrics/validation are not done yet."""
    loss_since_event: float = 0.0
    tokens_since_event: int = 0
    curve: list[dict] = field(default_factory=list)


class _Stop(Exception):
    """``should_stop()`` answered True."""


# ---------------------------------------------------------------- pure helpers


def _checkpointing(model, on: bool) -> None:
    """Activation checkpointing of a transformers model on or off (``activation_*`` since 5.x, ``gradient_*`` before)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)) and part and isinstance(part[0], Example):
            for e in part:
                h.update(array("q", e.input_ids).tobytes())
                h.update(array("q", e.labels).tobytes())
                h.update(b"|")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"#")
    return h.hexdigest()


# ---------------------------------------------------------------- the recipe


class Recipe:
    """One fine-tuning run over a base model it borrows (wrapped in place, restored after).

    Args:
        config: the hyperparameters.
        loaded: base model holder with ``.name``, ``.model`` (a causal LM), ``.tokenizer``.
        train: training examples.
        val: validation examples (may be empty: no validation metrics, no early stopping).
        workdir: directory for checkpoints and the final adapter.
        on_event: receives metric, checkpoint, resume and early-stop events (dicts).
        should_stop: polled before every micro-batch and validation batch.
        device: where to train; the model's device when None.
    """

    def __init__(
        self,
        config: TuneConfig,
        loaded,
        train: Sequence[Example],
        val: Sequence[Example],
        workdir: Path,
        *,
        on_event: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        device: str | torch.device | None = None,
    ):
        if not train:
            raise InvalidInput("there are no training examples", param="training_file")
        self.config = config
        self.loaded = loaded
        self.train_examples = list(train)
        self.val_examples = list(val)
        self.workdir = Path(workdir)
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = torch.device(device) if device is not None else next(loaded.model.parameters()).device
        tok = loaded.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else (getattr(tok, "eos_token_id", None) or 0)

        bs, accum = config.training_batch_size, config.gradient_accumulation_steps
        self.micro_per_epoch = math.ceil(len(self.train_examples) / bs)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / accum)
        planned = config.total_training_epochs * self.steps_per_epoch
        self.total_steps = min(planned, config.max_steps) if config.max_steps else planned
        self.fingerprint = _digest(
            config.model_dump(mode="json"), getattr(loaded, "name", ""), self.train_examples, self.val_examples
        )
        self.model = None
        self.params: list[tuple[str, torch.nn.Parameter]] = []
        self.state = _State()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.resumed_from: int | None = None
        self._boundary_rng: dict | None = None
        self._orders: dict[int, list[list[int]]] = {}

    # ------------------------------------------------------------ setup / teardown

    @property
    def adapted(self) -> bool:
        """Whether this run trains an adapter (LoRA, T-Few) rather than every weight (``full``)."""
        return self.config.type in ADAPTER_METHODS

    def _causal(self):
        """The transformers model being trained: the PEFT model's base, or the full run's copy."""
        return self.model.get_base_model() if self.adapted else self.model

    def setup(self) -> None:
        """Wrap the base model with a fresh adapter (seeded), or copy it for ``full``; build the optimizer,
        then resume if possible.

        Raises:
            InvalidInput: the target modules are not in the model, or ``full`` on a model over
                ``FULL_MAX_PARAMS`` parameters.
            Conflict: the work directory holds checkpoints of a different run.
        """
        from peft import get_peft_model

        base = self.loaded.model
        self._base_training = base.training
        self._base_grad = [p.requires_grad for p in base.parameters()]
        if self.device != next(base.parameters()).device:
            base.to(self.device)
        torch.manual_seed(self.config.seed)
        if not self.adapted:
            size = sum(p.numel() for p in base.parameters())
            if size > FULL_MAX_PARAMS:
                raise InvalidInput(
                    f"full fine-tuning takes models up to {FULL_MAX_PARAMS:,} parameters; this one has {size:,}: "
                    "train a LoRA or T-Few adapter instead", param="training_config.type")  # fmt: skip
            self.model = copy.deepcopy(base)  # the borrowed base stays as it was (it may be serving)
            self.model.requires_grad_(True)
        else:
            try:
                with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5: noise in every log
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    self.model = get_peft_model(base, self.config.peft_config())
            except ValueError as exc:
                raise InvalidInput(f"target_modules: {exc}", param="training_config.target_modules") from None
            self.model.peft_config["default"].base_model_name_or_path = getattr(self.loaded, "name", None) or None
        self.loss = CompletionLoss(self.model)  # logits at the completion positions only
        if self.config.gradient_checkpointing:  # transformers' own: each layer's activations recomputed
            _checkpointing(self._causal(), True)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        trainable = sum(p.numel() for _, p in self.params)
        total = sum(p.numel() for p in self.model.parameters())
        self.counts = (trainable, total)
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        self.model.train()
        self._boundary_rng = capture_rng(self.device)
        self.resume()

    def teardown(self) -> None:
        """Remove the adapter from the base model and restore its modes (or drop ``full``'s copy): the base is as
        it was."""
        if self.model is None:
            return
        if not self.adapted:  # the copy is dropped; the base was never touched
            self.model, self.best_weights = None, None
            return
        if self.config.gradient_checkpointing:
            _checkpointing(self.model.get_base_model(), False)
        base = self.model.unload()
        for p, flag in zip(base.parameters(), self._base_grad):
            p.requires_grad_(flag)
        base.train(self._base_training)
        self.model = None

    # ------------------------------------------------------------ data

    def _micro_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._orders:
            order = epoch_order(len(self.train_examples), self.config.seed, epoch)
            bs = self.config.training_batch_size
            self._orders = {epoch: [order[i : i + bs] for i in range(0, len(order), bs)]}
        return self._orders[epoch]

    def _poll(self) -> None:
        if self.should_stop():
            raise _Stop

    # ------------------------------------------------------------ train / evaluate

    def _train_step(self) -> None:
        """One optimizer step over up to ``gradient_accumulation_steps`` micro-batches."""
        s = self.state
        batches = self._micro_batches(s.epoch)
        group = batches[s.micro : s.micro + self.config.gradient_accumulation_steps]
        tokens = sum(self.train_examples[i].n_loss_tokens for mb in group for i in mb)
        lr = learning_rate_at(self.config, s.step, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        step_loss = 0.0
        try:
            for mb in group:
                self._poll()
                ids, attention, labels = collate([self.train_examples[i] for i in mb], self.pad_id, self.device)
                total, _ = self.loss.loss_sum(ids, attention, labels)
                (total / max(tokens, 1)).backward()
                step_loss += float(total.detach())
        except _Stop:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        s.step += 1
        s.micro += len(group)
        if s.micro >= len(batches):
            s.epoch, s.micro = s.epoch + 1, 0
        s.last_lr = lr
        s.loss_since_event += step_loss
        s.tokens_since_event += tokens
        s.pending_report = True
        self._boundary_rng = capture_rng(self.device)

    def evaluate(self) -> TokenStats:
        """Loss, token accuracy and count over the validation completion tokens (no grad, eval mode)."""
        stats = TokenStats()
        bs = self.config.training_batch_size
        self.model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(self.val_examples), bs):
                    self._poll()
                    ids, attention, labels = collate(self.val_examples[i : i + bs], self.pad_id, self.device)
                    stats = stats + self.loss.token_stats(ids, attention, labels)
        finally:
            self.model.train()
        return stats

    def _report(self) -> None:
        """Metric event, validation and early stopping for the step just done (idempotent on resume)."""
        s, c = self.state, self.config
        step, interval = s.step, c.log_model_metrics_interval_in_steps
        last = step == self.total_steps
        validate = bool(self.val_examples) and (step % interval == 0 or last)
        stats = self.evaluate() if validate else None  # may raise _Stop: nothing changed yet
        if step <= EVERY_STEP_UNTIL or step % interval == 0 or last:
            event = {
                "type": "metrics",
                "step": step,
                "total_steps": self.total_steps,
                "epoch": round(step / self.steps_per_epoch, 4),
                "train_loss": s.loss_since_event / s.tokens_since_event if s.tokens_since_event else None,
                "valid_loss": stats.loss if stats else None,
                "valid_token_accuracy": stats.accuracy if stats else None,
                "valid_perplexity": stats.perplexity if stats else None,
                "learning_rate": s.last_lr,
            }
            s.curve.append(event)
            s.loss_since_event, s.tokens_since_event = 0.0, 0
            self.on_event(dict(event))
        if stats is not None:
            if s.best_loss is None or stats.loss < s.best_loss - c.early_stopping_threshold:
                s.best_loss, s.best_step, s.bad_evals = stats.loss, step, 0
                if c.save_best_adapter:
                    self.best_weights = {n: p.detach().clone() for n, p in self.params}
            else:
                s.bad_evals += 1
                if c.early_stopping_patience and s.bad_evals >= c.early_stopping_patience and not last:
                    s.stopped_early = True
                    event = {"type": "early_stopped", "step": step, "best_step": s.best_step}
                    self.on_event({**event, "best_valid_loss": s.best_loss})
        s.pending_report = False

    def train(self) -> TuneResult:
        """Train until the planned steps, early stopping or ``should_stop()``; save the adapter.

        Returns:
            The result; ``interrupted`` when stopped (a checkpoint of the last step is kept).
        """
        interrupted = False
        try:
            if self.state.pending_report:
                self._report()
            while not self.state.stopped_early and self.state.step < self.total_steps:
                self._train_step()
                self._report()
                s = self.state
                if s.step % self.config.checkpoint_interval == 0 and s.step < self.total_steps and not s.stopped_early:
                    self.save_checkpoint()
        except _Stop:
            interrupted = True
            if self.state.step > 0:
                self.save_checkpoint()
        adapter = None if interrupted else self._save_adapter()
        return self._result(adapter, interrupted)

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / CHECKPOINT_DIR

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N/`` atomically (adapter, best adapter, optimizer, RNG, state)."""
        step = self.state.step
        weights = {n: p.detach().cpu().contiguous() for n, p in self.params}
        best = {n: t.cpu().contiguous() for n, t in self.best_weights.items()} if self.best_weights else None
        meta = {"fingerprint": self.fingerprint, "state": dataclasses.asdict(self.state)}

        def write(tmp: Path) -> None:
            save_file(weights, tmp / "adapter.safetensors")
            if best is not None:
                save_file(best, tmp / "best.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            save_rng(self._boundary_rng, tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps(meta))

        path = write_dir_atomically(self.checkpoint_dir / f"step-{step}", write)
        prune(self.checkpoint_dir, STATE_FILE, KEEP_CHECKPOINTS)
        self.on_event({"type": "checkpoint", "step": step, "epoch": round(step / self.steps_per_epoch, 4)})
        return path

    def resume(self) -> bool:
        """Load the newest complete checkpoint in the work directory, if any.

        Returns:
            True when training continues from a checkpoint.

        Raises:
            Conflict: the checkpoint was written for another config, base model or data.
        """
        remove_leftovers(self.checkpoint_dir)
        found = step_dirs(self.checkpoint_dir, STATE_FILE)
        if not found:
            return False
        step, path = found[-1]
        meta = json.loads((path / STATE_FILE).read_text())
        if meta.get("fingerprint") != self.fingerprint:
            raise Conflict(f"the checkpoints in {self.workdir} belong to a different run (config, model or data)")
        weights = load_file(path / "adapter.safetensors")
        with torch.no_grad():
            for name, p in self.params:
                p.copy_(weights[name].to(p.device))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        best = path / "best.safetensors"
        self.best_weights = {n: t.to(self.device) for n, t in load_file(best).items()} if best.exists() else None
        self.state = _State(**meta["state"])
        self._boundary_rng = load_rng(path / "rng.pt")
        restore_rng(self._boundary_rng, self.device)
        self.resumed_from = step
        self.on_event({"type": "resumed", "step": step})
        return True

    # ------------------------------------------------------------ result

    def _save_adapter(self) -> Path:
        s = self.state
        if self.config.save_best_adapter and self.best_weights is not None and s.best_step != s.step:
            with torch.no_grad():
                for name, p in self.params:
                    p.copy_(self.best_weights[name])

        def write(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            (tmp / "README.md").unlink(missing_ok=True)
            sort_module_lists(tmp / "adapter_config.json")  # PEFT writes sets in per-process order

        def write_model(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp), safe_serialization=True)

        if not self.adapted:
            return write_dir_atomically(self.workdir / MODEL_DIR, write_model)
        return write_dir_atomically(self.workdir / ADAPTER_DIR, write)

    def _result(self, adapter: Path | None, interrupted: bool) -> TuneResult:
        s = self.state
        chosen = s.best_step if (self.config.save_best_adapter and s.best_step is not None) else s.step
        final = next((e for e in reversed(s.curve) if e["step"] == chosen), s.curve[-1] if s.curve else {})
        trainable, total = self.counts
        return TuneResult(
            adapter_dir=adapter,
            method=self.config.type,
            trainable_params=trainable,
            total_params=total,
            trainable_fraction=trainable / total,
            steps=s.step,
            total_steps=self.total_steps,
            epochs=round(s.step / self.steps_per_epoch, 4),
            stopped_early=s.stopped_early,
            interrupted=interrupted,
            best_step=s.best_step,
            final_metrics={k: v for k, v in final.items() if k != "type"},
            curve=[dict(e) for e in s.curve],
            resumed_from_step=self.resumed_from,
        )


def run(
    config: TuneConfig,
    model,
    train: Sequence[Example],
    val: Sequence[Example],
    workdir: Path,
    on_event: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    device: str | torch.device | None = None,
) -> TuneResult:
    """Fine-tune ``model`` on ``train``, resuming from the newest checkpoint in ``workdir``.

    Calling ``run`` again with the same arguments after a crash, ``kill -9`` or a stop
    continues from the last complete checkpoint and ends with the same adapter tensors as
    an uninterrupted run; metric events after that checkpoint are sent again (same values).
    After completion the result is kept in ``workdir/result.json`` and a further call returns
    it without training.

    Args:
        config: hyperparameters.
        model: a ``LoadedModel``-like holder (``.name``, ``.model``, ``.tokenizer``). Its
            model is wrapped in place and restored before returning: do not serve from it
            meanwhile (``full`` trains a copy of it, which costs the model's memory once more).
        train: training examples (``data.load_examples`` / ``split_examples``).
        val: validation examples; empty disables validation metrics and early stopping.
        workdir: the run's own directory (``checkpoints/``, ``adapter/``, ``result.json``).
        on_event: called with each event: ``{"type": "metrics", "step", "total_steps",
            "epoch", "train_loss", "valid_loss", "valid_token_accuracy", "valid_perplexity",
            "learning_rate"}`` (``train_loss``: mean completion-token loss of the steps since
            the previous metrics event; ``valid_*``: None on steps without validation), and
            ``checkpoint``, ``resumed``, ``early_stopped`` events.
        should_stop: polled before every micro-batch and validation batch; True stops the run
            after saving a checkpoint of the last completed step.
        device: training device (``"cpu"``, ``"cuda"``); the model's device when None. A model
            elsewhere is moved there (and stays there).

    Returns:
        The ``TuneResult``.

    Raises:
        InvalidInput: no training examples, or target modules missing from the model.
        Conflict: ``workdir`` holds checkpoints or a result of a different run.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(config, model, train, val, workdir, on_event=on_event, should_stop=should_stop, device=device)
    done = workdir / RESULT_FILE
    if done.exists():
        stored = json.loads(done.read_text())
        if stored.get("fingerprint") != recipe.fingerprint:
            raise Conflict(f"{workdir} holds the result of a different run")
        return TuneResult.from_dict(stored["result"])
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[recipe.device] if recipe.device.type == "cuda" else []):
        try:
            recipe.setup()
            result = recipe.train()
        finally:
            recipe.teardown()
            random.setstate(py_state)
    if not result.interrupted:
        write_json_atomically(done, {"fingerprint": recipe.fingerprint, "result": result.to_dict()})
    return result
