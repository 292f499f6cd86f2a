"""Zero-shot accuracy through upstream lm-evaluation-harness, in-process, on a model already in memory.

The AlphaPruning, ATP and DLP repositories ship patched copies of lm-eval; upstream 0.4.x needs no patch:
``HFLM(pretrained=model, tokenizer=tokenizer)`` wraps a loaded (pruned) model, and a task is a registry name,
a YAML/JSON task file, or a task dict whose data are local files (``dataset_path: json`` with
``dataset_kwargs.data_files``), so evaluation also runs offline. lm-eval is the optional extra ``eval``.

Every check that needs no model (extra installed, task files readable, names in the registry) runs in
:func:`prepare_tasks`, which the command line calls before loading anything.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, MissingExtraError

# The seven zero-shot tasks of AlphaPruning's Tables 3 and 17 (after Wanda and SparseGPT).
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "rte")
TASK_SETS = {"paper": PAPER_TASKS}
EXTRA_INSTALL = "pip install 'optimum-alpha[eval]'"
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")
# Metrics reported per task (lm-eval's names without the ",none" filter suffix), when the task defines them.
REPORTED_METRICS = ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")

logger = logging.getLogger(__name__)
_TASK_MANAGERS: dict[bool, Any] = {}  # building the registry index reads ~10k YAML files: once per process


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or one line naming the extra to install."""
    try:
        import lm_eval
    except ImportError:
        raise MissingExtraError(
            f"zero-shot evaluation needs lm-eval, which is not installed; install the extra: {EXTRA_INSTALL}"
        ) from None
    return lm_eval


def split_tasks(text: str) -> list[str]:
    """``--tasks`` value: comma-separated names or files; ``paper`` is AlphaPruning's seven."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            names.extend(TASK_SETS.get(part, (part,)))
    return names


def _is_task_file(spec: str) -> bool:
    return spec.lower().endswith(TASK_FILE_SUFFIXES) or Path(spec).expanduser().is_file()


def _shipped_task(spec: str) -> Path | None:
    """The task file shipped under ``spec``'s name (``wikitext2_continuation``), which needs no download."""
    from .local_tasks import TASK_NAME, shipped_task_file

    return shipped_task_file() if spec == TASK_NAME else None


def _local_path(value: Any, base: Path | None) -> Any:
    """A relative data file path read from a task file, anchored at the task file's folder when it is there."""
    if not isinstance(value, str) or base is None or "://" in value or Path(value).is_absolute():
        return value
    anchored = base / value
    return str(anchored.resolve()) if anchored.exists() else value


def _with_local_data_files(config: dict[str, Any], base: Path | None, label: str) -> dict[str, Any]:
    """Relative ``dataset_kwargs.data_files`` resolved against ``base``; every local file must exist."""
    config = dict(config)
    kwargs = dict(config.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if files is None:
        return config

    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(v) for v in value]
        path = _local_path(value, base)
        if isinstance(path, str) and "://" not in path and not Path(path).expanduser().exists():
            raise ConfigError(f"task {label}: data file {value} does not exist; give a path relative to the "
                              "task file or an absolute one")
        return path

    kwargs["data_files"] = {k: resolve(v) for k, v in files.items()} if isinstance(files, dict) else resolve(files)
    config["dataset_kwargs"] = kwargs
    return config


def _read_task_file(path: Path) -> list[dict[str, Any]]:
    """Task configs of a YAML (lm-eval's own loader: ``include`` and ``!function`` work) or JSON file."""
    if not path.is_file():
        raise ConfigError(f"task file {path} does not exist; pass a registry task name or an existing "
                          f"{'/'.join(TASK_FILE_SUFFIXES)} file")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            from lm_eval.tasks._yaml_loader import load_yaml

            data = load_yaml(path, resolve_func=True, recursive=True)
    except (ValueError, OSError, ImportError) as err:
        raise ConfigError(f"task file {path} is not readable ({str(err).splitlines()[0]})") from err
    configs = data if isinstance(data, list) else [data]
    if not configs or not all(isinstance(c, dict) and "task" in c for c in configs):
        raise ConfigError(f"task file {path} must define a task: a mapping with a 'task' name (or a list of them)")
    return [_with_local_data_files(c, path.resolve().parent, str(path)) for c in configs]


def task_manager(include_registry: bool) -> Any:
    """lm-eval's ``TaskManager``; with the registry only when a name needs it (its index takes seconds)."""
    if include_registry not in _TASK_MANAGERS:
        from lm_eval.tasks import TaskManager

        _TASK_MANAGERS[include_registry] = TaskManager(include_defaults=include_registry)
    return _TASK_MANAGERS[include_registry]


@dataclass
class PreparedTasks:
    """What :func:`zero_shot` hands lm-eval: task names and dicts, and the task manager that knows them."""

    specs: list[Any]
    manager: Any
    labels: list[str] = field(default_factory=list)


def prepare_tasks(tasks: str | dict | Sequence[str | dict]) -> PreparedTasks:
    """Check every task before any model is loaded: lm-eval installed, files readable, names registered."""
    require_lm_eval()
    items = split_tasks(tasks) if isinstance(tasks, str) else [tasks] if isinstance(tasks, dict) else list(tasks)
    if not items:
        raise ConfigError(f"no task given; name lm-eval tasks (e.g. {','.join(PAPER_TASKS[:2])}), 'paper' for "
                          "AlphaPruning's seven, or task files")
    specs: list[Any] = []
    names: list[str] = []
    for item in items:
        if isinstance(item, dict):
            if "task" not in item:
                raise ConfigError("a task dict needs a 'task' name (see lm-eval's task guide)")
            specs.append(_with_local_data_files(item, None, str(item["task"])))
        elif isinstance(item, (str, Path)) and _is_task_file(str(item)):
            specs.extend(_read_task_file(Path(item).expanduser()))
        elif isinstance(item, str) and _shipped_task(item) is not None:
            specs.extend(_read_task_file(_shipped_task(item)))  # type: ignore[arg-type]
        elif isinstance(item, str):
            specs.append(item)
            names.append(item)
        else:
            raise ConfigError(f"a task is a name, a task file or a dict, not {type(item).__name__}")
    manager = task_manager(include_registry=bool(names))
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"unknown lm-eval task {name!r}; {hint}pass a registry name, 'paper' for "
                              "AlphaPruning's seven, 'wikitext2_continuation' (shipped, offline) or a task file "
                              "(.yaml/.json)")
    labels = [spec if isinstance(spec, str) else str(spec.get("task")) for spec in specs]
    return PreparedTasks(specs=specs, manager=manager, labels=labels)


@dataclass
class ZeroShotResult:
    """Per task: accuracy (and normalised accuracy where the task has it), samples, version, shots."""

    tasks: dict[str, dict[str, Any]]
    lm_eval_version: str
    limit: float | int | None
    num_fewshot: int | None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean of the tasks' ``acc`` (how the papers average their seven tasks)."""
        values = [t["acc"] for t in self.tasks.values() if isinstance(t.get("acc"), (int, float))]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("samples")
        data["mean_accuracy"] = self.mean_accuracy
        return data

    def rows(self) -> list[list[Any]]:
        """``[task, acc, acc_norm, samples, version]`` per task, for a table."""
        return [[name, t.get("acc"), t.get("acc_norm"), t.get("samples"), t.get("version")]
                for name, t in self.tasks.items()]


def _task_results(output: dict[str, Any], labels: list[str]) -> dict[str, dict[str, Any]]:
    results = {}
    for name, metrics in output["results"].items():
        if name in output.get("groups", {}) and name not in labels:
            continue
        entry: dict[str, Any] = {}
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric in REPORTED_METRICS and isinstance(value, (int, float)):
                entry[metric] = float(value)
        entry["samples"] = (output.get("n-samples", {}).get(name) or {}).get("effective")
        entry["version"] = output.get("versions", {}).get(name)
        entry["num_fewshot"] = output.get("n-shot", {}).get(name)
        results[name] = entry
    return results


def zero_shot(model: Any, tokenizer: Any, tasks: str | dict | Sequence[str | dict] = PAPER_TASKS,
              limit: int | float | None = None, batch_size: int = 1, num_fewshot: int | None = None,
              log_samples: bool = False, bootstrap_iters: int = 100000, quiet: bool = True) -> ZeroShotResult:
    """Accuracy of a loaded model on lm-eval tasks (names, task files or dicts), through
    ``lm_eval.simple_evaluate`` with ``HFLM(pretrained=model, tokenizer=tokenizer)``.

    ``limit`` evaluates only the first N documents of each task (a fraction when < 1): quicker, and stated
    with every result. ``log_samples`` keeps lm-eval's per-document records in ``result.samples``. lm-eval
    seeds Python's, numpy's and torch's global generators (its defaults) for reproducible few-shot sampling."""
    prepared = tasks if isinstance(tasks, PreparedTasks) else prepare_tasks(tasks)
    if tokenizer is None:
        raise ConfigError("zero-shot evaluation needs the model's tokenizer; pass tokenizer=")
    if getattr(tokenizer, "bos_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None:
        raise ConfigError("lm-eval needs a tokenizer with a BOS or EOS token (it prefixes empty contexts with it); "
                          "set tokenizer.eos_token")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    if quiet:
        lm_logger.setLevel(logging.ERROR)
    was_training = getattr(model, "training", False)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = simple_evaluate(model=lm, tasks=prepared.specs, task_manager=prepared.manager, limit=limit,
                                 num_fewshot=num_fewshot, log_samples=log_samples, bootstrap_iters=bootstrap_iters)
    finally:
        lm_logger.setLevel(level)
        model.train(was_training)
    return ZeroShotResult(tasks=_task_results(output, prepared.labels), lm_eval_version=output.get("lm_eval_version")
                          or getattr(require_lm_eval(), "__version__", "unknown"), limit=limit,
                          num_fewshot=num_fewshot, samples=output.get("samples") or {})
