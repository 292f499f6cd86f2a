"""``AlphaPruner``: the facade users call (load, analyse, prune, save, push) over the stage functions.

Follows optimum's quantizer pattern (``OptimumQuantizer``: ``from_pretrained`` + ``quantize``), with
:meth:`AlphaPruner.prune` as the main entry point. The work is done by plain stages that take a
:class:`~optimum_alpha.state.ModelState` (see docs/architecture.md): :mod:`.targets`, :mod:`.unstructured`,
:mod:`.structured`, :mod:`.epsilon_search`, chosen by :mod:`.pipeline`; checkpoints by the writers of
:mod:`.checkpoint.writers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from optimum.quantization_base import OptimumQuantizer
from torch import nn

from .configuration import AlphaPruningConfig
from .errors import CheckpointError
from .esd import ESDReport
from .matrices import BlockWeights
from .models import base_model_id, load_model, load_tokenizer
from .pipeline import prune_model
from .report import PruningReport, run_metadata
from .state import ModelState
from .targets import compute_targets


class AlphaPruner(OptimumQuantizer):
    """Holds a model, its tokenizer and its ESD analysis; prunes it in place with :meth:`prune`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, source: str | None = None,
                 show_progress: bool = True) -> None:
        self.state = ModelState(model, tokenizer, source, show_progress=show_progress)
        self.perplexity: dict[str, float | None] = {"dense": None, "pruned": None}
        # What evaluators measured (``kl``, ``zero_shot``, ``spectra``, ``speed``): saved in alpha_pruning.json.
        self.evaluation: dict[str, Any] = {}
        self.saved_path: Path | None = None
        self.recovery_report: Any = None  # set by recover()

    @classmethod
    def from_pretrained(cls, model_or_path: Any, file_name: str | None = None, tokenizer: Any = None,
                        run_analysis: bool = False, show_progress: bool = True,
                        **from_pretrained_kwargs: Any) -> "AlphaPruner":
        """Wrap a loaded model, or load one (hub id, folder, ``.gguf`` file, ``"smollm2-135m"``) through
        ``AutoModelForCausalLM.from_pretrained`` with ``from_pretrained_kwargs`` (``device_map``, ``dtype``,
        ``revision``, ``subfolder``, ``token``...; the tokenizer is loaded with the same source options).
        ``file_name`` is a GGUF file inside the given folder; ``tokenizer`` a tokenizer or its name/folder.

        The ESD analysis runs when an allocation first needs it (``allocation="alpha"``), so uniform, OWL and
        fixed N:M runs never pay for it; ``run_analysis=True`` runs it now."""
        if isinstance(tokenizer, (str, Path)):
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
        pruner = cls(model, tokenizer, source, show_progress=show_progress)
        if run_analysis:
            pruner.analyze(show_progress=show_progress)
        return pruner

    # The state every stage reads, exposed under the names users and earlier releases know.
    @property
    def model(self) -> nn.Module:
        return self.state.model

    @model.setter
    def model(self, model: nn.Module) -> None:  # recovery may hand back the model it trained
        self.state.model = model

    tokenizer = property(lambda self: self.state.tokenizer)
    source = property(lambda self: self.state.source)
    blocks = property(lambda self: self.state.blocks)
    blocks_path = property(lambda self: self.state.blocks_path)

    @property
    def last_report(self) -> PruningReport | None:
        """The report of the last prune; after an interruption, the blocks completed (``completed=False``)."""
        return self.state.last_report

    @property
    def esd_report(self) -> ESDReport:
        """The ESD analysis, run on first access (so only the runs that read it pay for it)."""
        if self.state.esd_report is None:
            self.state.analyze(**self.state.analysis_options)
        return self.state.esd_report  # type: ignore[return-value]

    @esd_report.setter
    def esd_report(self, report: ESDReport | None) -> None:
        self.state.esd_report = report

    def analyze(self, fix_finger: str = "reference", show_progress: bool = True, block_score: str = "mean",
                config: AlphaPruningConfig | None = None) -> ESDReport:
        """Run (or re-run with another fix-finger mode) the ESD analysis of the current weights, over the
        prunable matrices (``config.ignore`` / ``prune_routers`` decide which)."""
        return self.state.analyze(fix_finger, show_progress, block_score, config)

    def block_weights(self, config: AlphaPruningConfig | None = None) -> list[BlockWeights]:
        """Every block's weights sorted into prunable matrices, ignored (dense on purpose) and uncovered."""
        return self.state.block_weights(config or AlphaPruningConfig())

    def allocate(self, config: AlphaPruningConfig, show_progress: bool = False,
                 blocks: list[BlockWeights] | None = None) -> tuple[dict[str, float], list[float | None]]:
        """Per-matrix target sparsities and per-block scores (None when no score is used; OWL's outlier
        ratios with ``allocation="owl"``). With ``nm="mixed:M"`` every target is 1 - N/M for a whole N."""
        allocated = compute_targets(self.state, config, blocks, show_progress)
        return allocated.per_matrix, allocated.block_scores

    def prune(self, config: AlphaPruningConfig | None = None, show_progress: bool = True):
        """Allocate sparsities and prune every block in place; returns ``(model, PruningReport)``.

        Stages: check every block weight (covered by a prunable matrix or ignored on purpose, finite) →
        allocate per-matrix targets → capture calibration inputs → per block: collect statistics on the dense
        block → prune its matrices → write them → replay the pruned block for the next one.

        An interruption leaves blocks ``0..k-1`` fully pruned and the others untouched; ``last_report`` then
        lists the completed blocks with ``completed=False``. See docs/guarantees.md.
        """
        return prune_model(self.state, config or AlphaPruningConfig(), show_progress)

    def recover(self, config: Any = None, teacher: Any = None, show_progress: bool = True):
        """After :meth:`prune`: distillation / fine-tuning that keeps every pruned zero (``RecoveryConfig``);
        ``teacher`` defaults to the dense model loaded again from this pruner's source. See docs/recovery.md."""
        from .recovery.after_prune import recover_pruned

        return recover_pruned(self, config, teacher, show_progress)

    # ------------------------------------------------------------------------------------- optimum API
    def quantize(self, save_dir: str | Path, **kwargs: Any) -> Path:
        """optimum's entry point: prune with ``AlphaPruningConfig(**kwargs)`` and save to ``save_dir``."""
        from .checkpoint import check_save_request

        save_kwargs = {k: kwargs.pop(k) for k in ("format", "max_shard_size", "overwrite") if k in kwargs}
        config = AlphaPruningConfig.from_dict(kwargs)  # an unknown keyword is a ConfigError listing the fields
        # Whatever save_pretrained would refuse (folder, format, shard size) is refused before pruning.
        check_save_request(save_dir, config=config, model=self.model, **save_kwargs)
        self.prune(config)
        return self.save_pretrained(save_dir, **save_kwargs)

    def metadata(self) -> dict[str, Any]:
        """What ``alpha_pruning.json`` and the model card record about the run."""
        esd = self.state.esd_report
        data = run_metadata(self.last_report, base_model=base_model_id(self.source), perplexity=self.perplexity,
                            esd_blocks=[b.metrics for b in esd.blocks] if esd else [])
        data["evaluation"] = dict(self.evaluation)
        if self.recovery_report is not None:
            data["recovery"] = self.recovery_report.to_dict()
        return data

    def save_pretrained(self, save_dir: str | Path, format: str = "sparse", max_shard_size: str | int = "5GB",
                        overwrite: bool | str = False, **writer_options: Any) -> Path:
        """Save the pruned model in a registered checkpoint format (``sparse`` bitmask, ``dense``, ``gguf``
        with ``gguf_type=``, ``compressed-tensors`` packed integers after ``bits=``...) with the tokenizer, ``alpha_pruning.json`` and a model card."""
        from .checkpoint import save_pruned

        path = save_pruned(self.model, save_dir, tokenizer=self.tokenizer, format=format,
                           max_shard_size=max_shard_size, overwrite=overwrite, metadata=self.metadata(),
                           **writer_options)
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
