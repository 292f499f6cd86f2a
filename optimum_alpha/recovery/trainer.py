"""The recovery loop: ``transformers.Trainer`` with the objectives, the masks and Ctrl-C as callbacks.

Trainer does the loop, gradient accumulation, schedule, clipping, logging, checkpoints and resume; the
subclass only computes the loss (``compute_loss``). The masks hold through two callbacks' worth of hooks:
gradients of pruned entries are zeroed as they are computed, and the pruned entries are written to 0 again
right after every ``optimizer.step()`` (``on_optimizer_step``, before the scheduler and the next forward).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .config import RecoveryConfig
from .losses import hidden_mse, kd_loss, lm_loss
from .masks import SparsityMasks


class RecoveryTrainer(Trainer):
    """A Trainer whose loss is the recovery objective (KD to ``teacher``, next-token loss, or both)."""

    def __init__(self, *args: Any, teacher: nn.Module | None, recovery: RecoveryConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.recovery = recovery
        self.loss_is_scaled_for_ga = False  # a per-micro-batch mean: Trainer divides by the accumulation steps

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        config = self.recovery
        ids = inputs["input_ids"]
        hidden = config.hidden_mse_weight > 0
        outputs = model(input_ids=ids, use_cache=False, output_hidden_states=hidden)
        teacher_out = None
        if config.needs_teacher:
            with torch.no_grad():
                teacher_out = self.teacher(input_ids=ids, use_cache=False, output_hidden_states=hidden)
        if config.objective == "lm":
            loss = lm_loss(outputs.logits, ids)
        else:
            loss = kd_loss(outputs.logits, teacher_out.logits, config.temperature)
            if config.objective == "mix":
                loss = config.kd_weight * loss + (1 - config.kd_weight) * lm_loss(outputs.logits, ids)
        if hidden:
            loss = loss + config.hidden_mse_weight * hidden_mse(outputs.hidden_states, teacher_out.hidden_states)
        return (loss, outputs) if return_outputs else loss


class MaskCallback(TrainerCallback):
    """Pruned entries back to exactly 0 after every optimizer step (and when training starts or resumes)."""

    def __init__(self, masks: SparsityMasks) -> None:
        self.masks = masks

    def on_train_begin(self, args, state, control, **kwargs):
        self.masks.apply()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.masks.apply()


class LossCurve(TrainerCallback):
    """The logged training loss per step, and a progress bar that shows it."""

    def __init__(self, show_progress: bool) -> None:
        self.show_progress = show_progress
        self.points: list[tuple[int, float]] = []
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="Recovery", unit="step",
                        disable=not self.show_progress)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append((int(state.global_step), float(logs["loss"])))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class StopRequest(TrainerCallback):
    """Ctrl-C (or SIGTERM) during training: finish the current step, save a resumable checkpoint, stop.

    A second Ctrl-C stops at once, without a checkpoint (the last periodic one stays resumable)."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def request(self) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and state.global_step % args.save_steps:
            control.should_save = False  # the run is complete: nothing to resume, no 3x-model write
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = int(state.global_step)
        return control


@contextlib.contextmanager
def stop_on_interrupt(stop: StopRequest) -> Iterator[None]:
    """Route the first SIGINT/SIGTERM to ``stop.request()``; a second one raises ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def training_arguments(config: RecoveryConfig, output_dir: str) -> TrainingArguments:
    """The RecoveryConfig as TrainingArguments (no reporting integrations, our own progress bar)."""
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_schedule,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.log_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
    )


def build_trainer(model: nn.Module, teacher: nn.Module | None, dataset: Any, config: RecoveryConfig,
                  output_dir: str, masks: SparsityMasks, show_progress: bool) -> tuple[RecoveryTrainer, LossCurve,
                                                                                       StopRequest]:
    curve, stop = LossCurve(show_progress), StopRequest()
    trainer = RecoveryTrainer(model=model, args=training_arguments(config, output_dir), train_dataset=dataset,
                              teacher=teacher, recovery=config, callbacks=[MaskCallback(masks), curve, stop])
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    if teacher is not None and not getattr(teacher, "hf_device_map", None):
        teacher.to(trainer.args.device)
    return trainer, curve, stop
