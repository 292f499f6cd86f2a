"""``AlphaPruner``: load a causal LM, analyse its spectra, allocate sparsity and prune block by block.

Follows optimum's quantizer pattern (``OptimumQuantizer``: ``from_pretrained`` + ``quantize``), with
:meth:`AlphaPruner.prune` as the main entry point.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate.utils import align_module_device
from optimum.quantization_base import OptimumQuantizer
from torch import nn
from tqdm.auto import tqdm

from .allocation import allocate
from .calibration import BlockInputs, capture_block_inputs, run_block
from .configuration import AlphaPruningConfig
from .data import calibration_windows
from .errors import CalibrationDataError, CheckpointError
from .esd import ESDReport, analyze
from .evaluate import max_positions
from .model_utils import check_finite, find_blocks, find_prunable_layers, weight_matrix
from .models import base_model_id, load_model
from .nm import check_nm_divisible, mixed_nm_counts
from .offload import write_layer_weight
from .owl import collect_outlier_ratios, owl_allocation
from .pruning import get_pruner_class
from .report import BlockReport, PruningReport, layer_sparsity

logger = logging.getLogger(__name__)


class AlphaPruner(OptimumQuantizer):
    """Holds a model, its tokenizer and its ESD analysis; prunes it in place with :meth:`prune`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, source: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.esd_report: ESDReport | None = None
        self.last_report: PruningReport | None = None
        self.blocks_path, self.blocks = find_blocks(model)
        self.perplexity: dict[str, float | None] = {"dense": None, "pruned": None}
        self.saved_path: Path | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_or_path: Any,
        file_name: str | None = None,
        tokenizer: Any = None,
        run_analysis: bool = True,
        fix_finger: str = "reference",
        show_progress: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> "AlphaPruner":
        """Wrap a loaded model, or load one (hub id, folder, ``.gguf`` file, ``"smollm2-135m"``) through
        ``AutoModelForCausalLM.from_pretrained`` with ``from_pretrained_kwargs`` (``device_map``, ``dtype``...),
        then run the ESD analysis. ``file_name`` is a GGUF file inside the given folder."""
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
        if run_analysis:
            pruner.analyze(fix_finger=fix_finger, show_progress=show_progress)
        return pruner

    def analyze(self, fix_finger: str = "reference", show_progress: bool = True) -> ESDReport:
        """Run (or re-run with another fix-finger mode) the ESD analysis of the current weights."""
        self.esd_report = analyze(self.model, fix_finger=fix_finger, show_progress=show_progress)  # type: ignore[arg-type]
        return self.esd_report

    # ----------------------------------------------------------------------------------------- allocation
    def _layer_names(self) -> list[tuple[int, str, nn.Module]]:
        return [
            (i, f"{self.blocks_path}.{i}.{name}", layer)
            for i, block in enumerate(self.blocks)
            for name, layer in find_prunable_layers(block, i).items()
        ]

    def allocate(self, config: AlphaPruningConfig, show_progress: bool = False
                 ) -> tuple[dict[str, float], list[float | None]]:
        """Per-layer target sparsities and per-block scores (None when no score is used; OWL's outlier
        ratios with ``allocation="owl"``). With ``nm="mixed:M"`` every target is 1 - N/M for a whole N."""
        layers = self._layer_names()
        if config.nm_group is not None:
            check_nm_divisible(layers, config.nm_group)
        if config.nm_pattern is not None:
            n, m = config.nm_pattern
            return {name: 1.0 - n / m for _, name, _ in layers}, [None] * len(self.blocks)
        targets, block_scores = self._continuous_targets(config, layers, show_progress)
        if config.nm_mixed_group is not None:
            targets = self._round_to_mixed_nm(targets, layers, config)
        return targets, block_scores

    def _continuous_targets(self, config: AlphaPruningConfig, layers: list[tuple[int, str, nn.Module]],
                            show_progress: bool) -> tuple[dict[str, float], list[float | None]]:
        m = config.nm_mixed_group
        # Mixed N:M keeps at least one weight per group, so no unit may go past (M - 1)/M.
        max_sparsity = config.max_sparsity if m is None else min(config.max_sparsity, (m - 1) / m)
        if config.allocation == "uniform":
            return {name: float(config.sparsity) for _, name, _ in layers}, [None] * len(self.blocks)
        if config.allocation == "owl":
            return self._owl_targets(config, layers, max_sparsity, show_progress)
        report = self.esd_report
        if report is None or report.fix_finger != config.fix_finger:
            report = self.analyze(fix_finger=config.fix_finger)
        scores, counts = report.scores(config.metric, config.granularity)
        sparsities = allocate(
            scores, counts, config.sparsity, "alpha", epsilon=config.epsilon, max_sparsity=max_sparsity
        )
        block_scores = [b.metrics[config.metric] for b in report.blocks]
        if config.granularity == "block":
            return {name: sparsities[i] for i, name, _ in layers}, block_scores
        by_name = {m.name: s for m, s in zip(report.matrices, sparsities)}
        return {name: by_name[name] for _, name, _ in layers}, block_scores

    def _owl_targets(self, config: AlphaPruningConfig, layers: list[tuple[int, str, nn.Module]],
                     max_sparsity: float, show_progress: bool) -> tuple[dict[str, float], list[float | None]]:
        """OWL: a dense sequential pass measures each block's outlier ratio, which sets its sparsity."""
        if self.tokenizer is None:
            raise CalibrationDataError(
                "The 'owl' allocation measures outliers on calibration text, hence needs a tokenizer, and this "
                "model has none; pass tokenizer= to AlphaPruner.from_pretrained or use allocation='alpha'."
            )
        inputs, _ = self._calibration_inputs(config)
        ratios = collect_outlier_ratios(self.blocks, inputs, config.owl_threshold, show_progress)
        del inputs
        counts = [0] * len(self.blocks)
        for i, _, layer in layers:
            counts[i] += weight_numel(layer)
        sparsities = owl_allocation(ratios, counts, config.sparsity, config.owl_lambda, max_sparsity)
        return {name: sparsities[i] for i, name, _ in layers}, list(ratios)

    @staticmethod
    def _round_to_mixed_nm(targets: dict[str, float], layers: list[tuple[int, str, nn.Module]],
                           config: AlphaPruningConfig) -> dict[str, float]:
        """Turn the continuous targets into one whole N per unit (block or matrix) with the exact budget."""
        m = config.nm_mixed_group
        unit_of = {name: (i if config.granularity == "block" else name) for i, name, _ in layers}
        sizes: dict[Any, int] = {}
        wanted: dict[Any, float] = {}
        for _, name, layer in layers:
            unit = unit_of[name]
            sizes[unit] = sizes.get(unit, 0) + weight_numel(layer)
            wanted.setdefault(unit, targets[name])
        units = list(sizes)
        counts = mixed_nm_counts([wanted[u] for u in units], [sizes[u] for u in units], config.sparsity, m)
        n_of = dict(zip(units, counts))
        return {name: 1.0 - n_of[unit_of[name]] / m for _, name, _ in layers}

    # -------------------------------------------------------------------------------------------- pruning
    def _calibration_inputs(self, config: AlphaPruningConfig) -> tuple[BlockInputs, dict[str, Any]]:
        if self.tokenizer is None:
            raise CalibrationDataError(
                f"Method {config.method!r} needs calibration text, hence a tokenizer, and this model has none; "
                "pass tokenizer= to AlphaPruner.from_pretrained or use method='magnitude'."
            )
        seqlen = config.resolve_seqlen(max_positions(self.model))
        ids = calibration_windows(
            self.tokenizer, config.calibration_dataset, config.nsamples, seqlen, config.seed
        )
        inputs = capture_block_inputs(self.model, self.blocks[0], ids)
        details = {
            "dataset": config.to_dict()["calibration_dataset"],
            "nsamples": config.nsamples,
            "seqlen": seqlen,
            "seed": config.seed,
            "tokens": int(ids.numel()),
        }
        logger.info("Calibration: %d windows of %d tokens from %s", config.nsamples, seqlen, details["dataset"])
        return inputs, details

    @torch.no_grad()
    def prune(self, config: AlphaPruningConfig | None = None, show_progress: bool = True):
        """Allocate sparsities and prune every block in place; returns ``(model, PruningReport)``.

        Blocks are processed in order. Each block's new weights are all computed before any is written, so an
        interruption (KeyboardInterrupt or error) leaves blocks ``0..k-1`` fully pruned and the others
        untouched; ``self.last_report`` then lists the completed blocks with ``completed=False``. A Ctrl-C
        that arrives while a block is being written is held until that block is written and reported.
        Every weight is checked for NaN/Inf before block 0 is touched. See docs/guarantees.md.
        """
        config = config or AlphaPruningConfig()
        if config.structure == "width":  # heads and channels go first (then, optionally, the code below)
            from .structured import prune_structured

            return prune_structured(self, config, show_progress)
        start = time.perf_counter()
        for _, name, layer in self._layer_names():  # a NaN in block k fails before block 0 is touched
            with align_module_device(layer):
                check_finite(weight_matrix(layer), name)
        targets, block_scores = self.allocate(config, show_progress)
        pruner_cls = get_pruner_class(config.method)
        sparsegpt = config.method == "sparsegpt"
        options = {"percdamp": config.percdamp, "blocksize": config.blocksize} if sparsegpt else {}
        report = PruningReport(config=config.to_dict(), layer_targets=dict(targets))
        self.last_report = report
        inputs = None
        if pruner_cls.needs_calibration:
            inputs, report.calibration = self._calibration_inputs(config)
        group = config.nm_group
        progress = tqdm(list(enumerate(self.blocks)), desc=f"Pruning ({config.method})", unit="block",
                        disable=not show_progress)
        for index, block in progress:
            block_start = time.perf_counter()
            layers = find_prunable_layers(block, index)
            names = {local: f"{self.blocks_path}.{index}.{local}" for local in layers}
            pruners = {local: pruner_cls(layer, names[local], **options) for local, layer in layers.items()}
            if inputs is not None:
                self._collect_statistics(block, layers, pruners, inputs)
            new_weights = {}
            for local, layer in layers.items():
                with align_module_device(layer):
                    weight = weight_matrix(layer)  # finite: checked for every layer before block 0
                    target = targets[names[local]]
                    nm = (round((1.0 - target) * group), group) if group else None
                    new_weights[local] = pruners[local].prune(weight, target, nm)
                pruners[local].free()
            wanted = sum(targets[names[k]] * weight_numel(layers[k]) for k in layers)
            with hold_interrupts():  # a Ctrl-C here lands once the block is fully written and reported
                achieved, params = self._write_block(layers, new_weights, names, report)
                report.blocks.append(
                    BlockReport(
                        index=index,
                        score=block_scores[index],
                        target_sparsity=wanted / params,
                        achieved_sparsity=achieved / params,
                        num_params=params,
                        seconds=0.0,
                    )
                )
            if inputs is not None:
                inputs.hidden_states = run_block(block, inputs)
            report.blocks[-1].seconds = time.perf_counter() - block_start
            report.elapsed_s = time.perf_counter() - start
        report.completed = True
        logger.info("Pruned to %.4f total sparsity in %.1f s", report.total_sparsity, report.elapsed_s)
        return self.model, report

    @staticmethod
    def _collect_statistics(block: nn.Module, layers: dict[str, nn.Module], pruners: dict, inputs: BlockInputs) -> None:
        """One pass of the dense block over the calibration set, feeding every layer's inputs to its pruner."""

        def make_hook(local: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                pruners[local].add_batch(args[0].detach())

            return hook

        handles = [layer.register_forward_hook(make_hook(local)) for local, layer in layers.items()]
        try:
            run_block(block, inputs, keep_outputs=False)
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _write_block(layers: dict[str, nn.Module], new_weights: dict[str, torch.Tensor],
                     names: dict[str, str], report: PruningReport) -> tuple[float, int]:
        """Write every new weight back; returns (zeros, parameters) of the block."""
        zeros, params = 0.0, 0
        for local, layer in layers.items():
            weight = new_weights[local]
            write_layer_weight(layer, weight)
            sparsity = layer_sparsity(weight)
            report.layers[names[local]] = sparsity
            zeros += sparsity * weight.numel()
            params += weight.numel()
        return zeros, params

    # ------------------------------------------------------------------------------------- optimum API
    def quantize(self, save_dir: str | Path, file_prefix: str | None = None, **kwargs: Any) -> Path:
        """optimum's entry point: prune with ``AlphaPruningConfig(**kwargs)`` and save to ``save_dir``."""
        from .checkpoint.save import check_save_target

        save_kwargs = {k: kwargs.pop(k) for k in ("format", "max_shard_size", "overwrite") if k in kwargs}
        config = AlphaPruningConfig(**kwargs)
        # A folder that save_pretrained would refuse is refused now, before the model is pruned.
        check_save_target(Path(save_dir).expanduser().resolve(), bool(save_kwargs.get("overwrite", False)))
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
            "calibration": report.calibration if report else {},
            "structured": report.structured if report else [],
            "perplexity": dict(self.perplexity),
            "esd_blocks": [b.metrics for b in self.esd_report.blocks] if self.esd_report else [],
        }

    def save_pretrained(self, save_dir: str | Path, format: str = "sparse", max_shard_size: str | int = "5GB",
                        overwrite: bool = False) -> Path:
        """Save the pruned model (``sparse`` bitmask or ``dense`` safetensors), tokenizer, metadata and card."""
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


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Delay SIGINT (Ctrl-C) until the block exits, then deliver it to the previous handler.

    Only the main thread can set signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and previous is not signal.SIG_IGN:
        if callable(previous):
            previous(signal.SIGINT, held[0])
        else:
            raise KeyboardInterrupt


def weight_numel(layer: nn.Module) -> int:
    return layer.weight.numel()
