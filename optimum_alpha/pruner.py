"""``AlphaPruner``: load a causal LM, analyse its spectra, allocate sparsity and prune block by block.

Follows optimum's quantizer pattern (``OptimumQuantizer``: ``from_pretrained`` + ``quantize``), with
:meth:`AlphaPruner.prune` as the main entry point.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import align_module_device
from optimum.quantization_base import OptimumQuantizer
from torch import nn
from tqdm.auto import tqdm

from .allocation import allocate
from .calibration import BlockInputs, capture_block_inputs, run_block
from .configuration import AlphaPruningConfig
from .data import sample_calibration
from .errors import CalibrationDataError, CheckpointError, ModelStructureError
from .esd import ESDReport, analyze
from .evaluate import max_positions
from .interrupts import hold_interrupts
from .matrices import BlockWeights, PrunableMatrix, check_covered, model_weights
from .model_utils import check_finite, find_blocks
from .models import base_model_id, load_model
from .nm import check_nm_divisible, mixed_nm_counts
from .owl import collect_outlier_ratios, owl_allocation
from .pruning import LayerPruner, get_pruner_class
from .quantization.layer import quantising_pruner_class
from .quantization.plan import check_quantizable, plan_bit_widths, quantization_summary
from .quantization.state import forget_quantization, record_quantized, recorded_grids
from .report import BlockReport, PruningReport, layer_sparsity
from .statistics import collect_block_statistics

logger = logging.getLogger(__name__)


class AlphaPruner(OptimumQuantizer):
    """Holds a model, its tokenizer and its ESD analysis; prunes it in place with :meth:`prune`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, source: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self._esd_report: ESDReport | None = None
        self.analysis_options: dict[str, Any] = {"fix_finger": "reference", "show_progress": True}
        self.last_report: PruningReport | None = None
        self.blocks_path, self.blocks = find_blocks(model)
        self.perplexity: dict[str, float | None] = {"dense": None, "pruned": None}
        self.saved_path: Path | None = None
        self.recovery_report: Any = None  # set by recover()

    @classmethod
    def from_pretrained(
        cls,
        model_or_path: Any,
        file_name: str | None = None,
        tokenizer: Any = None,
        run_analysis: bool = False,
        fix_finger: str = "reference",
        show_progress: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> "AlphaPruner":
        """Wrap a loaded model, or load one (hub id, folder, ``.gguf`` file, ``"smollm2-135m"``) through
        ``AutoModelForCausalLM.from_pretrained`` with ``from_pretrained_kwargs`` (``device_map``, ``dtype``,
        ``revision``, ``subfolder``, ``token``...; the tokenizer is loaded with the same source options).
        ``file_name`` is a GGUF file inside the given folder; ``tokenizer`` a tokenizer or its name/folder.

        The ESD analysis runs when an allocation first needs it (``allocation="alpha"``), so uniform, OWL and
        fixed N:M runs never pay for it; ``run_analysis=True`` runs it now."""
        if isinstance(tokenizer, (str, Path)):
            from .models import load_tokenizer

            tokenizer = load_tokenizer(str(tokenizer), required=True)
        if isinstance(model_or_path, nn.Module):
            model, source = model_or_path, getattr(getattr(model_or_path, "config", None), "_name_or_path", None)
        else:
            if file_name is not None:
                from_pretrained_kwargs.setdefault("gguf_file", file_name)
                from_pretrained_kwargs.setdefault("dtype", torch.float32)
            model, loaded_tokenizer = load_model(model_or_path, **from_pretrained_kwargs)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
            source = str(model_or_path)
        pruner = cls(model, tokenizer, source)
        pruner.analysis_options = {"fix_finger": fix_finger, "show_progress": show_progress}
        if run_analysis:
            pruner.analyze(fix_finger=fix_finger, show_progress=show_progress)
        return pruner

    @property
    def esd_report(self) -> ESDReport:
        """The ESD analysis, run on first access (so only the runs that read it pay for it)."""
        if self._esd_report is None:
            self.analyze(**self.analysis_options)
        return self._esd_report  # type: ignore[return-value]

    @esd_report.setter
    def esd_report(self, report: ESDReport | None) -> None:
        self._esd_report = report

    def analyze(self, fix_finger: str = "reference", show_progress: bool = True, block_score: str = "mean",
                config: AlphaPruningConfig | None = None) -> ESDReport:
        """Run (or re-run with another fix-finger mode) the ESD analysis of the current weights, over the
        prunable matrices (``config.ignore`` / ``prune_routers`` decide which)."""
        matrices = [m for block in self.block_weights(config) for m in block.matrices]
        sampling = {"esd_sampling": config.esd_sampling, "farms": config.farms_options} if config else {}
        self._esd_report = analyze(self.model, fix_finger=fix_finger, show_progress=show_progress,  # type: ignore[arg-type]
                                   matrices=matrices, block_score=block_score, **sampling)
        return self._esd_report

    def block_weights(self, config: AlphaPruningConfig | None = None) -> list[BlockWeights]:
        """Every block's weights sorted into prunable matrices, ignored (dense on purpose) and uncovered."""
        config = config or AlphaPruningConfig()
        return model_weights(self.model, config.ignore, config.prune_routers)[1]

    # ----------------------------------------------------------------------------------------- allocation
    def allocate(self, config: AlphaPruningConfig, show_progress: bool = False,
                 blocks: list[BlockWeights] | None = None) -> tuple[dict[str, float], list[float | None]]:
        """Per-matrix target sparsities and per-block scores (None when no score is used; OWL's outlier
        ratios with ``allocation="owl"``). With ``nm="mixed:M"`` every target is 1 - N/M for a whole N."""
        blocks = blocks if blocks is not None else self.block_weights(config)
        matrices = [m for block in blocks for m in block.matrices]
        if config.nm_group is not None:
            check_nm_divisible(matrices, config.nm_group)
        if config.nm_pattern is not None:
            n, m = config.nm_pattern
            return {matrix.name: 1.0 - n / m for matrix in matrices}, [None] * len(self.blocks)
        targets, block_scores = self._continuous_targets(config, blocks, matrices, show_progress)
        if config.nm_mixed_group is not None:
            targets = self._round_to_mixed_nm(targets, matrices, config)
        return targets, block_scores

    def _continuous_targets(self, config: AlphaPruningConfig, blocks: list[BlockWeights],
                            matrices: list[PrunableMatrix], show_progress: bool
                            ) -> tuple[dict[str, float], list[float | None]]:
        m = config.nm_mixed_group
        # Mixed N:M keeps at least one weight per group, so no unit may go past (M - 1)/M.
        max_sparsity = config.max_sparsity if m is None else min(config.max_sparsity, (m - 1) / m)
        if config.allocation == "uniform":
            return {matrix.name: float(config.sparsity) for matrix in matrices}, [None] * len(self.blocks)
        if config.allocation == "owl":
            return self._owl_targets(config, blocks, max_sparsity, show_progress)
        names = [matrix.name for matrix in matrices]
        report = self.spectra(config, names, show_progress)
        scores, counts = report.scores(config.metric, config.granularity)
        sparsities = allocate(
            scores, counts, config.sparsity, "alpha", epsilon=config.epsilon, max_sparsity=max_sparsity
        )
        by_block = {b.index: b.metrics[config.metric] for b in report.blocks}
        block_scores = [by_block.get(i) for i in range(len(self.blocks))]
        if config.granularity == "block":
            unit_of = {b.index: s for b, s in zip(report.blocks, sparsities)}
            return {matrix.name: unit_of[matrix.block_index] for matrix in matrices}, block_scores
        by_name = {spectrum.name: s for spectrum, s in zip(report.matrices, sparsities)}
        return {name: by_name[name] for name in names}, block_scores

    def spectra(self, config: AlphaPruningConfig, names: list[str], show_progress: bool = False) -> ESDReport:
        """The ESD analysis of the matrices ``names`` with the config's fit options, reused when it matches."""
        report = self._esd_report  # None until an allocation first needs it
        if (report is None or not report.matches(config.fix_finger, config.block_score, config.esd_sampling,
                                                 config.farms_options)
                or [spectrum.name for spectrum in report.matrices] != names):
            report = self.analyze(fix_finger=config.fix_finger, show_progress=show_progress,
                                  block_score=config.block_score, config=config)
        return report

    def _owl_targets(self, config: AlphaPruningConfig, blocks: list[BlockWeights], max_sparsity: float,
                     show_progress: bool) -> tuple[dict[str, float], list[float | None]]:
        """OWL: a dense sequential pass measures each block's outlier ratio, which sets its sparsity."""
        if self.tokenizer is None:
            raise CalibrationDataError(
                "The 'owl' allocation measures outliers on calibration text, hence needs a tokenizer, and this "
                "model has none; pass tokenizer= to AlphaPruner.from_pretrained or use allocation='alpha'."
            )
        inputs, _ = self._calibration_inputs(config)
        block_matrices = [block.matrices for block in blocks]
        ratios = collect_outlier_ratios(self.blocks, block_matrices, inputs, config.owl_threshold, show_progress)
        del inputs
        counts = [sum(m.numel for m in matrices) for matrices in block_matrices]
        sparsities = owl_allocation(ratios, counts, config.sparsity, config.owl_lambda, max_sparsity)
        return ({m.name: sparsities[i] for i, matrices in enumerate(block_matrices) for m in matrices},
                list(ratios))

    @staticmethod
    def _round_to_mixed_nm(targets: dict[str, float], matrices: list[PrunableMatrix],
                           config: AlphaPruningConfig) -> dict[str, float]:
        """Turn the continuous targets into one whole N per unit (block or matrix) with the exact budget."""
        m = config.nm_mixed_group
        unit_of = {mat.name: (mat.block_index if config.granularity == "block" else mat.name) for mat in matrices}
        sizes: dict[Any, int] = {}
        wanted: dict[Any, float] = {}
        for matrix in matrices:
            unit = unit_of[matrix.name]
            sizes[unit] = sizes.get(unit, 0) + matrix.numel
            wanted.setdefault(unit, targets[matrix.name])
        units = list(sizes)
        counts = mixed_nm_counts([wanted[u] for u in units], [sizes[u] for u in units], config.sparsity, m)
        n_of = dict(zip(units, counts))
        return {matrix.name: 1.0 - n_of[unit_of[matrix.name]] / m for matrix in matrices}

    # -------------------------------------------------------------------------------------------- pruning
    def _calibration_inputs(self, config: AlphaPruningConfig) -> tuple[BlockInputs, dict[str, Any]]:
        if self.tokenizer is None:
            raise CalibrationDataError(
                f"Method {config.method!r} needs calibration text, hence a tokenizer, and this model has none; "
                "pass tokenizer= to AlphaPruner.from_pretrained or use method='magnitude'."
            )
        seqlen = config.resolve_seqlen(max_positions(self.model))
        sample = sample_calibration(self.tokenizer, config.calibration_dataset, config.nsamples, seqlen,
                                    config.seed, config.calibration_sampling)
        for notice in sample.notices:
            logger.warning("Calibration: %s", notice)
        ids = sample.ids
        inputs = capture_block_inputs(self.model, self.blocks, ids)
        details = {
            "dataset": config.to_dict()["calibration_dataset"],
            "nsamples": int(ids.shape[0]),
            "seqlen": seqlen,
            "seed": config.seed,
            "tokens": int(ids.numel()),
            **sample.describe(),
        }
        logger.info("Calibration: %d windows of %d tokens from %s (%s sampling)", details["nsamples"], seqlen,
                    sample.source, sample.sampling)
        return inputs, details

    def _check_weights(self, blocks: list[BlockWeights]) -> None:
        """Before block 0 is touched: every weight is accounted for and every block parameter is finite."""
        check_covered(blocks)
        if not any(block.matrices for block in blocks):
            raise ModelStructureError(
                "Nothing to prune: every weight inside the blocks is ignored; shorten the ignore list."
            )
        for index, block in enumerate(self.blocks):  # norms too: a NaN anywhere poisons the statistics
            for local, module in block.named_modules():
                with align_module_device(module):
                    for name, param in module.named_parameters(recurse=False):
                        full = ".".join(part for part in (self.blocks_path, str(index), local, name) if part)
                        check_finite(param.detach(), full)

    @torch.no_grad()
    def prune(self, config: AlphaPruningConfig | None = None, show_progress: bool = True):
        """Allocate sparsities and prune every block in place; returns ``(model, PruningReport)``.

        Stages: check every block weight (covered by a prunable matrix or ignored on purpose, finite) →
        allocate per-matrix targets → capture calibration inputs → per block: collect statistics on the dense
        block → prune its matrices → write them → replay the pruned block for the next one.

        Blocks are processed in order. Each block's new weights are all computed before any is written, so an
        interruption (KeyboardInterrupt or error) leaves blocks ``0..k-1`` fully pruned and the others
        untouched; ``self.last_report`` then lists the completed blocks with ``completed=False``. A Ctrl-C
        that arrives while a block is being written is held until that block is written and reported.
        The model is run in eval mode (dropout off) and its mode restored afterwards. See docs/guarantees.md.
        """
        config = config or AlphaPruningConfig()
        if config.searches_epsilon:  # one prune per grid value, then this method again with the best ε
            from .epsilon_search import search_epsilon

            return search_epsilon(self, config, show_progress)
        if config.structure == "width":  # heads and channels go first (then, optionally, the code below)
            from .structured import prune_structured

            return prune_structured(self, config, show_progress)
        if config.nm_pattern is not None and abs(config.effective_sparsity - config.sparsity) > 1e-9:
            logger.info("N:M pattern %s sets the sparsity to %.4f; sparsity=%s is not used.",
                           config.nm, config.effective_sparsity, config.sparsity)
        start = time.perf_counter()
        blocks = self.block_weights(config)
        self._check_weights(blocks)
        was_training = self.model.training
        self.model.eval()
        try:
            pruner_cls = get_pruner_class(config.method)
            forget_quantization(self.model)
            widths = None
            if config.bits is not None:  # prune, then quantise each matrix to its allocated width
                matrices = [m for block in blocks for m in block.matrices]
                check_quantizable(matrices, config)
                widths = plan_bit_widths(config, blocks,
                                         lambda: self.spectra(config, [m.name for m in matrices], show_progress))
                pruner_cls = quantising_pruner_class(pruner_cls, widths, config.group_size,
                                                     config.weight_quant_method)
            if pruner_cls.needs_calibration or config.allocation == "owl":
                config.resolve_seqlen(max_positions(self.model))  # a too-long seqlen fails before any analysis
            targets, block_scores = self.allocate(config, show_progress, blocks)
            report = PruningReport(config=config.to_dict(), layer_targets=dict(targets),
                                   ignored={name: n for block in blocks for name, n in block.ignored.items()},
                                   sparsity_structure=config.sparsity_structure)
            self.last_report = report
            inputs = None
            if pruner_cls.needs_calibration:
                inputs, report.calibration = self._calibration_inputs(config)
            progress = tqdm(list(enumerate(self.blocks)), desc=f"Pruning ({config.method})", unit="block",
                            disable=not show_progress)
            for index, block in progress:
                block_start = time.perf_counter()
                matrices = blocks[index].matrices
                pruners = {m.name: pruner_cls(m.name, **config.pruner_options(pruner_cls.options))
                           for m in matrices}
                if inputs is not None:
                    self._collect_statistics(index, matrices, pruners, inputs)
                new_weights = self._prune_block(matrices, pruners, targets, config, report)
                quantized = {name: p.quantized for name, p in pruners.items() if getattr(p, "quantized", None)}
                with hold_interrupts():  # a Ctrl-C here lands once the block is fully written and reported
                    self._write_block(index, matrices, new_weights, targets, blocks[index], block_scores, report)
                    record_quantized(self.model, quantized)
                if inputs is not None:
                    inputs.hidden_states = run_block(block, inputs, index)
                report.blocks[-1].seconds = time.perf_counter() - block_start
                report.elapsed_s = time.perf_counter() - start
        finally:
            self.model.train(was_training)
        report.completed = True
        if widths is not None:
            numels = {m.name: m.numel for block in blocks for m in block.matrices}
            scale_bytes = next(iter(recorded_grids(self.model).values())).scales.element_size()
            report.quantization = quantization_summary(config, widths, numels, scale_bytes)
        if report.pinned_blocks:
            logger.warning(
                "Blocks %s are pinned at the sparsity cap (max_sparsity=%s): the allocation wanted more there and "
                "gave the excess to other blocks; lower epsilon or raise max_sparsity to change that.",
                report.pinned_blocks, config.max_sparsity)
        if report.uncalibrated:
            logger.warning(
                "%d expert matrices received no calibration token and were pruned by magnitude: %s",
                len(report.uncalibrated), ", ".join(report.uncalibrated[:8]),
            )
        logger.info("Pruned to %.4f total sparsity in %.1f s", report.total_sparsity, report.elapsed_s)
        return self.model, report

    def _collect_statistics(self, index: int, matrices: list[PrunableMatrix], pruners: dict[str, LayerPruner],
                            inputs: BlockInputs) -> None:
        """Stage 1 of a block: one dense pass feeding every matrix's calibration inputs to its pruner."""
        collect_block_statistics(self.blocks[index], index, matrices, pruners, inputs)

    @staticmethod
    def _prune_block(matrices: list[PrunableMatrix], pruners: dict[str, LayerPruner], targets: dict[str, float],
                     config: AlphaPruningConfig, report: PruningReport) -> dict[str, torch.Tensor]:
        """New values of every matrix of the block, computed before any is written. A matrix that received no
        calibration input (an expert no token was routed to) is pruned by magnitude and reported."""
        group = config.nm_group
        new_weights = {}
        for matrix in matrices:
            pruner = pruners[matrix.name]
            if not pruner.calibrated:
                report.uncalibrated.append(matrix.name)
                pruner = pruners[matrix.name] = pruner.fallback()
            weight = matrix.read()  # finite: every block weight is checked before block 0
            target = targets[matrix.name]
            nm = (round((1.0 - target) * group), group) if group else None
            new_weights[matrix.name] = pruner.prune(weight, target, nm)
            pruners[matrix.name].free()
        return new_weights

    @staticmethod
    def _write_block(index: int, matrices: list[PrunableMatrix], new_weights: dict[str, torch.Tensor],
                     targets: dict[str, float], weights: BlockWeights, block_scores: list[float | None],
                     report: PruningReport) -> None:
        """Write every new weight back and report the block: achieved over its pruned matrices, and over
        all its weights (ignored ones counted dense)."""
        zeros, params = 0.0, 0
        for matrix in matrices:
            weight = new_weights[matrix.name]
            matrix.write(weight)
            sparsity = layer_sparsity(weight)
            report.layers[matrix.name] = sparsity
            zeros += sparsity * weight.numel()
            params += weight.numel()
        wanted = sum(targets[m.name] * m.numel for m in matrices)
        report.blocks.append(
            BlockReport(
                index=index,
                score=block_scores[index],
                target_sparsity=wanted / params if params else 0.0,
                achieved_sparsity=zeros / params if params else 0.0,
                num_params=params,
                seconds=0.0,
                ignored_params=sum(weights.ignored.values()),
            )
        )

    def recover(self, config: Any = None, teacher: Any = None, show_progress: bool = True):
        """After :meth:`prune`: distillation / fine-tuning that keeps every pruned zero (``RecoveryConfig``);
        ``teacher`` defaults to the dense model loaded again from this pruner's source. See docs/recovery.md."""
        from .recovery.after_prune import recover_pruned

        return recover_pruned(self, config, teacher, show_progress)

    # ------------------------------------------------------------------------------------- optimum API
    def quantize(self, save_dir: str | Path, file_prefix: str | None = None, **kwargs: Any) -> Path:
        """optimum's entry point: prune with ``AlphaPruningConfig(**kwargs)`` and save to ``save_dir``."""
        from .checkpoint.save import check_save_request

        from .checkpoint.compressed_tensors import check_config_for_format, check_model_for_format

        save_kwargs = {k: kwargs.pop(k) for k in ("format", "max_shard_size", "overwrite") if k in kwargs}
        config = AlphaPruningConfig(**kwargs)
        # Whatever save_pretrained would refuse (folder, format, shard size) is refused before pruning.
        check_save_request(save_dir, **save_kwargs)
        fmt = save_kwargs.get("format", "sparse")
        check_config_for_format(config, fmt)
        check_model_for_format(self.block_weights(config), fmt)
        self.prune(config)
        return self.save_pretrained(save_dir, **save_kwargs)

    def metadata(self) -> dict[str, Any]:
        """What ``alpha_pruning.json`` and the model card record about the run."""
        from . import __version__

        report = self.last_report
        return {
            "library": "optimum-alpha",
            "version": __version__,
            "base_model": base_model_id(self.source),
            "config": report.config if report else None,
            "metric": report.config.get("metric") if report else None,
            "blocks": [
                {"index": b.index, "score": b.score, "target_sparsity": b.target_sparsity,
                 "achieved_sparsity": b.achieved_sparsity}
                for b in (report.blocks if report else [])
            ],
            "layers": report.layers if report else {},
            "total_sparsity": report.total_sparsity if report else None,
            "target_sparsity": report.target_sparsity if report else None,
            "sparsity_structure": report.sparsity_structure if report else None,
            "pinned_blocks": report.pinned_blocks if report else [],
            "block_weight_sparsity": report.block_weight_sparsity if report else None,
            "ignored": report.ignored if report else {},
            "uncalibrated": report.uncalibrated if report else [],
            "calibration": report.calibration if report else {},
            "epsilon_search": report.epsilon_search if report else {},
            "structured": report.structured if report else [],
            "quantization": report.quantization if report else {},
            "perplexity": dict(self.perplexity),
            "esd_blocks": [b.metrics for b in self._esd_report.blocks] if self._esd_report else [],
            **({"recovery": self.recovery_report.to_dict()} if self.recovery_report is not None else {}),
        }

    def save_pretrained(self, save_dir: str | Path, format: str = "sparse", max_shard_size: str | int = "5GB",
                        overwrite: bool | str = False) -> Path:
        """Save the pruned model (``sparse`` bitmask, ``dense`` safetensors, or ``compressed-tensors`` packed
        integers after ``bits=``), tokenizer, metadata and card."""
        from .checkpoint import save_pruned

        path = save_pruned(self.model, save_dir, tokenizer=self.tokenizer, format=format,
                           max_shard_size=max_shard_size, overwrite=overwrite, metadata=self.metadata())
        self.saved_path = Path(path)
        return self.saved_path

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, save_dir: str | Path | None = None) -> str:
        """Upload the saved folder (``save_pretrained`` first) to the Hub; returns the repo URL."""
        from .checkpoint import push_folder_to_hub

        folder = Path(save_dir) if save_dir is not None else self.saved_path
        if folder is None:
            raise CheckpointError("Nothing saved yet: call save_pretrained(save_dir) before push_to_hub.")
        return push_folder_to_hub(folder, repo_id, private=private, token=token, commit_message=commit_message)


