"""``RecoveryConfig``: what a recovery run trains, on which data, for how long, and where it checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..configuration import check_field_types
from ..errors import ConfigError
from ..options import LR_SCHEDULES as SCHEDULES
from ..options import RECOVERY_METHODS as METHODS
from ..options import RECOVERY_OBJECTIVES as OBJECTIVES
from ..options import recovery_default

# Full: the best of 5e-5, 1e-4, 2e-4 and 5e-4 in a 24 k-token KD sweep on SmolLM2 at 50 % (docs/recovery.md);
# LoRA's low-rank update takes larger steps (the usual 5e-4, not swept).
DEFAULT_LEARNING_RATES = {"full": 2e-4, "lora": 5e-4}


@dataclass
class RecoveryConfig:
    """Configuration of one recovery run (distillation or next-token fine-tuning after pruning). Defaults,
    choices and command-line flags come from ``optimum_alpha.options.RECOVERY_OPTIONS``.

    Args:
        objective: ``kd`` (KL divergence to the dense teacher's next-token distribution), ``lm`` (plain
            next-token loss on the data) or ``mix`` (``kd_weight`` x KD + (1 - ``kd_weight``) x LM).
        temperature: KD temperature T; the KL of the two softened distributions is scaled by T² (Hinton).
        kd_weight: share of the KD term with ``objective="mix"``.
        hidden_mse_weight: weight of an extra per-block hidden-state loss (MSE between student and teacher
            block outputs, each divided by the teacher's mean square so blocks weigh alike); 0 turns it off.
        method: ``full`` (every kept weight trains, pruned ones stay exactly 0) or ``lora`` (peft adapters
            on ``lora_targets``, merged back at the end, pruned weights set to 0 again after the merge).
        lora_targets: module names (``q_proj``, or full names) that get adapters; None: every prunable
            Linear inside the blocks (routers excluded).
        lora_experts: also put adapters on fused mixture-of-experts parameters (peft ``target_parameters``).
        lora_rank, lora_alpha, lora_dropout: peft ``LoraConfig`` r, lora_alpha, lora_dropout.
        steps: optimizer steps. Each step sees ``batch_size x gradient_accumulation`` windows of ``seqlen``.
        learning_rate: peak learning rate; None: 2e-4 for ``full``, 5e-4 for ``lora``.
        warmup_steps: linear warm-up steps; None: 5 % of ``steps`` (at least 1).
        lr_schedule, weight_decay, max_grad_norm: the Trainer's schedule and optimizer options.
        seqlen: tokens per training window.
        dataset: ``"c4"`` (the shipped sample, minus every document the pruning calibration or ε search
            used), a local ``.txt``/``.json``/``.jsonl``/``.parquet`` file, or a ``datasets`` Hub id.
        dataset_config, dataset_split: the ``datasets`` configuration name and split of a Hub id.
        train_routers: MoE routers are frozen unless this is True (a changed router sends tokens to experts
            the recovery did not train for them).
        output_dir: where the Trainer writes its resumable checkpoints (None: a ``.recovery`` folder next to
            the output, or a temporary folder).
        save_steps: a resumable checkpoint every so many steps (and one when Ctrl-C stops the run).
        resume: continue from the last checkpoint in ``output_dir`` (True) or from a given checkpoint folder.
        seed: data order and dropout seed.
        log_steps: loss recorded (and shown) every so many steps.
        evaluate, eval_dataset, eval_seqlen, eval_windows: perplexity of the student before and after recovery
            (and of the teacher) on the first ``eval_windows`` windows of ``eval_seqlen`` tokens (None: all);
            the default is the demo's protocol (20 WikiText-2 windows of 512 tokens).
    """

    objective: str = recovery_default("objective")
    temperature: float = recovery_default("temperature")
    kd_weight: float = recovery_default("kd_weight")
    hidden_mse_weight: float = recovery_default("hidden_mse_weight")
    method: str = recovery_default("method")
    lora_targets: list[str] | None = recovery_default("lora_targets")
    lora_experts: bool = recovery_default("lora_experts")
    lora_rank: int = recovery_default("lora_rank")
    lora_alpha: float = recovery_default("lora_alpha")
    lora_dropout: float = recovery_default("lora_dropout")
    steps: int = recovery_default("steps")
    learning_rate: float | None = recovery_default("learning_rate")
    warmup_steps: int | None = recovery_default("warmup_steps")
    lr_schedule: str = recovery_default("lr_schedule")
    weight_decay: float = recovery_default("weight_decay")
    max_grad_norm: float = recovery_default("max_grad_norm")
    batch_size: int = recovery_default("batch_size")
    gradient_accumulation: int = recovery_default("gradient_accumulation")
    seqlen: int = recovery_default("seqlen")
    dataset: str = recovery_default("dataset")
    dataset_config: str | None = recovery_default("dataset_config")
    dataset_split: str = recovery_default("dataset_split")
    train_routers: bool = recovery_default("train_routers")
    output_dir: str | None = recovery_default("output_dir")
    save_steps: int = recovery_default("save_steps")
    resume: bool | str = recovery_default("resume")
    seed: int = recovery_default("seed")
    log_steps: int = recovery_default("log_steps")
    evaluate: bool = recovery_default("evaluate")
    eval_dataset: str = recovery_default("eval_dataset")
    eval_seqlen: int = recovery_default("eval_seqlen")
    eval_windows: int | None = recovery_default("eval_windows")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value checked, so a wrong one is one line before any model is loaded."""
        resume = self.resume
        self.resume = False  # a str is a valid resume value that the bool check would refuse
        targets = self.lora_targets
        self.lora_targets = None
        check_field_types(self)
        self.resume, self.lora_targets = resume, targets
        if not isinstance(self.resume, (bool, str)):
            raise ConfigError(f"resume must be true/false or a checkpoint folder, got {self.resume!r}.")
        if self.lora_targets is not None:
            if isinstance(self.lora_targets, str):
                self.lora_targets = [t for t in self.lora_targets.split(",") if t]
            if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
                raise ConfigError(f"lora_targets must be a list of module names, got {targets!r}.")
            self.lora_targets = list(self.lora_targets)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Unknown recovery objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}.")
        if self.method not in METHODS:
            raise ConfigError(f"Unknown recovery method {self.method!r}; use 'full' or 'lora'.")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"Unknown lr_schedule {self.lr_schedule!r}; use one of {', '.join(SCHEDULES)}.")
        if self.steps <= 0:
            raise ConfigError(f"steps must be at least 1, got {self.steps}; recovery needs optimizer steps.")
        positive = ("batch_size", "gradient_accumulation", "seqlen", "lora_rank", "save_steps", "log_steps",
                    "eval_seqlen")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; 1 is the plain KL.")
        if not 0 <= self.kd_weight <= 1:
            raise ConfigError(f"kd_weight must be in [0, 1], got {self.kd_weight}.")
        for name in ("hidden_mse_weight", "weight_decay", "lora_dropout", "max_grad_norm", "warmup_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.lora_dropout >= 1:
            raise ConfigError(f"lora_dropout must be below 1, got {self.lora_dropout}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise ConfigError(f"eval_windows must be at least 1 (or None for all), got {self.eval_windows}.")
        if self.method != "lora" and (self.lora_targets is not None or self.lora_experts):
            raise ConfigError("lora_targets/lora_experts need method='lora'; drop them or set method='lora'.")

    @property
    def needs_teacher(self) -> bool:
        """KD, the mix and the hidden-state loss compare with the dense teacher; plain LM loss does not."""
        return self.objective != "lm" or self.hidden_mse_weight > 0

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation * self.seqlen

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["learning_rate"] = self.lr
        return json.loads(json.dumps(data, default=str))
