"""``RecoveryConfig``: what a recovery run trains, on which data, for how long, and where it checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..configuration import check_field_types
from ..errors import ConfigError

OBJECTIVES = ("kd", "lm", "mix")
METHODS = ("full", "lora")
SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
# Learning rates that recovered SmolLM2-135M in a few hundred steps (docs/recovery.md): LoRA's low-rank
# update needs a larger step than full fine-tuning of every kept weight.
DEFAULT_LEARNING_RATES = {"full": 5e-5, "lora": 5e-4}


@dataclass
class RecoveryConfig:
    """Configuration of one recovery run (distillation or next-token fine-tuning after pruning).

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
        learning_rate: peak learning rate; None: 5e-5 for ``full``, 5e-4 for ``lora``.
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

    objective: str = "kd"
    temperature: float = 1.0
    kd_weight: float = 0.5
    hidden_mse_weight: float = 0.0
    method: str = "full"
    lora_targets: list[str] | None = None
    lora_experts: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    steps: int = 200
    learning_rate: float | None = None
    warmup_steps: int | None = None
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 1
    gradient_accumulation: int = 1
    seqlen: int = 512
    dataset: str = "c4"
    dataset_config: str | None = None
    dataset_split: str = "train"
    train_routers: bool = False
    output_dir: str | None = None
    save_steps: int = 50
    resume: bool | str = False
    seed: int = 0
    log_steps: int = 1
    evaluate: bool = True
    eval_dataset: str = "wikitext2"
    eval_seqlen: int = 512
    eval_windows: int | None = 20

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
