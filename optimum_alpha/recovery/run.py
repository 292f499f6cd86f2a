"""``recover_model``: check everything, train with the masks held, merge, verify the zeros, report.

Every check that can fail (teacher missing or with another vocabulary, a model that is not pruned, a LoRA
target that does not exist, a window longer than the model's positions, a resume without a checkpoint, data
too short) runs before the first training step, so a mistake costs one line and no training time.

Memory: the student, its gradients and Adam's two moments (4 copies of the trainable weights), plus the
teacher (1 copy) and the activations of one micro-batch for both. SmolLM2-135M in float32 with 512-token windows:
4.4 GB peak RSS (measured).
A model where the teacher does not fit beside the student needs ``objective="lm"`` (no teacher) or LoRA
(the student's gradients and moments shrink to the adapters').
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelStructureError
from ..evaluate import max_positions
from ..matrices import find_routers
from ..model_utils import find_blocks
from .config import RecoveryConfig
from .data import WindowDataset, recovery_windows
from .masks import SparsityMasks
from .report import RecoveryReport

logger = logging.getLogger(__name__)


class RecoveryInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the recovery after a step; ``checkpoint`` resumes it (``resume=True``)."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"recovery stopped after step {step}; resumable checkpoint {checkpoint} "
                         "(run again with resume=True / --resume)")
        self.step = step
        self.checkpoint = checkpoint


def _vocabulary(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _block_params(model: nn.Module) -> int:
    return sum(p.numel() for p in find_blocks(model)[1].parameters())


def check_teacher(student: nn.Module, teacher: nn.Module | None, config: RecoveryConfig) -> None:
    """A teacher where the objective needs one, with the student's vocabulary (and depth/width for hidden MSE)."""
    if teacher is None:
        if config.needs_teacher:
            raise ConfigError(f"objective {config.objective!r} distils from the dense model, and no teacher was given; "
                              "pass teacher= (CLI: --teacher BASE) or use objective='lm'.")
        return
    if _vocabulary(teacher) != _vocabulary(student):
        raise ConfigError(f"The teacher predicts {_vocabulary(teacher)} tokens and the student {_vocabulary(student)}: "
                          "another vocabulary; pass the dense model the student was pruned from.")
    if config.hidden_mse_weight > 0:
        s, t = student.config, teacher.config
        if (s.num_hidden_layers, s.hidden_size) != (t.num_hidden_layers, t.hidden_size):
            raise ConfigError("hidden_mse_weight needs a teacher with the student's blocks and hidden size; "
                              "set hidden_mse_weight=0 or pass the model the student was pruned from.")


def is_width_pruned(student: nn.Module, teacher: nn.Module | None, record: dict[str, Any] | None) -> bool:
    """Heads/channels removed: recorded by the pruning run, listed in the config, or fewer block weights."""
    from ..structured.checkpoint import block_widths

    if (record or {}).get("structured") or block_widths(student.config) is not None:
        return True
    return teacher is not None and _block_params(student) < _block_params(teacher)


def check_not_quantised(model: nn.Module, record: dict[str, Any]) -> None:
    """Fine-tuning moves every weight off its integer grid: the result would be neither the quantised model
    nor savable as one. Recovery comes between pruning and quantisation, and quantising afterwards
    (``sparsity=0, bits=...``) holds the zeros, so refuse rather than warn."""
    from ..quantization.state import recorded_grids

    grids = recorded_grids(model)
    config = getattr(model.config, "quantization_config", None)
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    recorded = ((record.get("quantization") or {}).get("bits") or {}).values()
    widths = sorted({grid.spec.bits for grid in grids.values()} or set(recorded))
    if grids or str(method) == "compressed-tensors" or widths:
        bits = "/".join(str(b) for b in widths) if widths else "integer"
        raise ConfigError(
            f"The model's block weights are quantised ({bits}-bit); recovery would train them in float and undo "
            "that. Recover the float pruned model, then quantise it: AlphaPruner.from_pretrained(recovered)"
            ".prune(AlphaPruningConfig(sparsity=0, bits=...)) keeps every zero (CLI: prune RECOVERED "
            "--sparsity 0 --bits ...).")


def plain_dense(model: nn.Module) -> None:
    """Drop the loader state of an ``alpha_sparse``/``alpha_width``/GGUF load: in memory it is a dense model
    with zeros, and Trainer refuses to fine-tune a model marked quantized."""
    for key in ("hf_quantizer", "quantization_method"):
        if hasattr(model, key):
            delattr(model, key)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    for key in ("quantization_config", "_is_quantized"):
        if hasattr(model.config, key):
            delattr(model.config, key)


def freeze_routers(model: nn.Module) -> list[nn.Parameter]:
    """Stop gradients to MoE routers (the experts then train on the tokens the pruned model routes to them)."""
    frozen = []
    for block in find_blocks(model)[1]:
        modules = dict(block.named_modules())
        for name in find_routers(block):
            for param in modules[name].parameters():
                if param.requires_grad:
                    param.requires_grad_(False)
                    frozen.append(param)
    return frozen


def _perplexity(model: nn.Module, tokenizer: Any, config: RecoveryConfig) -> float:
    from ..evaluate import perplexity

    return perplexity(model, tokenizer, dataset=config.eval_dataset, seqlen=config.eval_seqlen,
                      max_windows=config.eval_windows, show_progress=False)


def _checkpoint_dir(config: RecoveryConfig, output: str | Path | None) -> tuple[str, bool]:
    """(folder of the Trainer checkpoints, whether it is ours to delete once the run completes)."""
    if config.output_dir is not None:
        return str(Path(config.output_dir).expanduser()), False
    if output is not None:
        target = Path(output).expanduser().resolve()
        return str(target.with_name(target.name + ".recovery")), True
    return tempfile.mkdtemp(prefix="alpha-recovery-"), True


def _resume_point(config: RecoveryConfig, folder: str) -> str | None:
    if config.resume is False:
        return None
    if isinstance(config.resume, str):
        if not (Path(config.resume) / "trainer_state.json").is_file():
            raise ConfigError(f"resume={config.resume!r} is not a Trainer checkpoint folder (no trainer_state.json).")
        return config.resume
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(folder) if Path(folder).is_dir() else None
    if last is None:
        raise ConfigError(f"resume=True but {folder} holds no checkpoint; run without --resume to start afresh.")
    return last


def recover_model(model: nn.Module, tokenizer: Any, config: RecoveryConfig | None = None,
                  teacher: nn.Module | None = None, record: dict[str, Any] | None = None,
                  output: str | Path | None = None, show_progress: bool = True,
                  callbacks: list[Any] | None = None) -> tuple[nn.Module, RecoveryReport]:
    """Recover a pruned ``model`` in place (LoRA: merged) and return ``(model, RecoveryReport)``.

    ``record`` is the pruning run's metadata (``alpha_pruning.json`` or ``AlphaPruner.metadata()``): its
    ``calibration`` and ``epsilon_search`` say which C4 documents the recovery data must leave out, its
    ``config.ignore`` which weights are dense on purpose. ``output`` only places the default checkpoint folder.
    ``callbacks``: more ``transformers.TrainerCallback`` objects (a benchmark's perplexity curve, logging).
    """
    config = config or RecoveryConfig()
    config.validate()
    record = record or {}
    if tokenizer is None:
        raise ConfigError("Recovery reads training text, hence needs the model's tokenizer; pass tokenizer=.")
    check_not_quantised(model, record)
    check_teacher(model, teacher, config)
    ignore = (record.get("config") or {}).get("ignore")
    masks = SparsityMasks.from_model(model, ignore)
    width = is_width_pruned(model, teacher, record)
    if not masks.is_pruned and not width:
        raise ModelStructureError(
            f"The model is not pruned ({masks.sparsity:.2%} of its prunable weights are zero, no heads or channels "
            "removed); prune it first (AlphaPruner.prune / alpha-prune prune) or fine-tune it with a plain Trainer.")
    limit = max_positions(model)
    if limit is not None and config.seqlen > limit:
        raise ConfigError(f"seqlen {config.seqlen} exceeds the model's {limit} positions; use seqlen <= {limit}.")
    targets = None
    if config.method == "lora":
        from .lora import check_targets

        targets = check_targets(model, config)
    folder, ours = _checkpoint_dir(config, output)
    resume_from = _resume_point(config, folder)
    data = recovery_windows(tokenizer, config.dataset, config.seqlen, record.get("calibration"),
                            int((record.get("epsilon_search") or {}).get("heldout_windows") or 0),
                            config.dataset_config, config.dataset_split, config.steps * config.tokens_per_step)
    report = RecoveryReport(config=config.to_dict(), data=data.describe(), sparsity_before=masks.sparsity,
                            masked_parameters=len(masks.masks), width_pruned=width)
    plain_dense(model)
    if config.evaluate:
        report.perplexity = {"dataset": config.eval_dataset, "seqlen": config.eval_seqlen,
                             "windows": config.eval_windows, "dense": None,
                             "before": _perplexity(model, tokenizer, config), "after": None}
        if teacher is not None:
            report.perplexity["dense"] = _perplexity(teacher, tokenizer, config)
    start, cpu = time.perf_counter(), time.process_time()
    model, interrupted = _train(model, teacher, data.windows, config, masks, folder, targets, resume_from, report,
                                show_progress, callbacks or [])
    report.wall_s, report.cpu_s = time.perf_counter() - start, time.process_time() - cpu
    report.tokens = report.steps * config.tokens_per_step
    report.epochs = report.tokens / max(data.windows.numel(), 1)
    if interrupted is not None:
        raise interrupted
    _verify_zeros(model, masks, ignore, report)
    if config.evaluate:
        report.perplexity["after"] = _perplexity(model, tokenizer, config)
    report.completed = True
    if ours:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        report.checkpoint = folder
    return model, report


def _train(model: nn.Module, teacher: nn.Module | None, windows: torch.Tensor, config: RecoveryConfig,
           masks: SparsityMasks, folder: str, targets: list[str] | None, resume_from: str | None,
           report: RecoveryReport, show_progress: bool,
           callbacks: list[Any]) -> tuple[nn.Module, RecoveryInterrupted | None]:
    """Trainer.train with the masks held; LoRA adapters attached before and merged after."""
    from .trainer import build_trainer, stop_on_interrupt

    frozen = [] if config.train_routers else freeze_routers(model)
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    trained = model
    if targets is not None:
        from .lora import attach_lora

        trained = attach_lora(model, config, targets)
    else:
        masks.hook_gradients()
    trainer, curve, stop = build_trainer(trained, teacher, WindowDataset(windows), config, folder, masks,
                                         show_progress)
    for callback in callbacks:
        trainer.add_callback(callback)
    try:
        with stop_on_interrupt(stop):
            trainer.train(resume_from_checkpoint=resume_from)
    finally:
        masks.remove_hooks()
        for param in frozen:
            param.requires_grad_(True)
        report.loss_curve = curve.points
        report.steps = int(trainer.state.global_step)
    if targets is not None:
        from .lora import merge_lora

        model = merge_lora(trained)
    masks.apply()
    model.eval()
    if stop.stopped_at is not None and stop.stopped_at < config.steps:
        from transformers.trainer_utils import get_last_checkpoint

        return model, RecoveryInterrupted(stop.stopped_at, get_last_checkpoint(folder))
    return model, None


def _verify_zeros(model: nn.Module, masks: SparsityMasks, ignore: Any, report: RecoveryReport) -> None:
    """Every pruned entry is still exactly 0 (a failure here is a bug, never a user error)."""
    leaked = masks.violations()
    if leaked:
        raise RuntimeError(f"{leaked} pruned weights are non-zero after recovery; please report this bug.")
    report.sparsity_after = SparsityMasks.from_model(model, ignore).sparsity
    if report.sparsity_after < report.sparsity_before - 1e-12:  # the zero set can only grow, never shrink
        raise RuntimeError("sparsity fell during recovery; please report this bug.")
