"""A tune job is a file: ``%tune … --export job.yaml`` writes it, ``nbkit tune --config job.yaml`` runs it.

The file holds the complete, validated configuration of a run: model, method and its
options, the prompts in full (so the job needs no notebook), the data specs, the
training settings and the seed. Data that a notebook held in a variable is written
beside the job as a folder of split files; relative paths in the file are relative to
the file, so the job runs the same from any directory, on any node.

The same file runs under ``accelerate launch -m nbkit tune --config job.yaml`` and
``torchrun --nproc-per-node N -m nbkit tune --config job.yaml`` (see :mod:`nbkit.distributed`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import TuneConfig, task_names
from .data import load_data, save_splits
from .errors import ConfigError, NbkitError
from .jobs import parse_value
from .prompts import Prompt
from .runs import Run
from .session import register_prompt

VERSION = 1
MAX_BYTES = 1_000_000  # a job file holds settings and prompts; data is written beside it
# keys of a job file besides the TuneConfig fields
EXTRA_KEYS = ("nbkit_job", "prompts")
# TuneConfig fields a recipe decides from the model and the prompt; a job file may carry them, tune does not take them
DERIVED = ("architecture", "labels")


def _config_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(TuneConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TuneConfig)}


def write_job(path: str | os.PathLike, config: Mapping, prompts: Sequence, datas: Sequence,
              namespace: Mapping[str, Any] | None = None) -> Path:
    """Write a job file.

    Args:
        path: the ``.yaml`` file to write.
        config: a validated :class:`nbkit.training.TuneConfig` as a dict.
        prompts: the :class:`Prompt` of each task.
        datas: the data of each task as given (a spec, or a DataFrame / list of dicts / Dataset).
        namespace: where a data spec naming a notebook variable is looked up.

    Returns:
        The path written.
    """
    import yaml

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError("export", f"writes a YAML job file; give a name ending in .yaml, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    names = task_names([p.name for p in prompts])
    specs = [_portable_spec(data, path, name, namespace) for name, data in zip(names, datas)]
    body = dict(config)
    body["data"] = specs if len(specs) > 1 else specs[0]
    document = {"nbkit_job": VERSION, **body,
                "prompts": {p.name: {k: v for k, v in p.to_dict().items() if k != "name"} for p in prompts}}
    header = (f"# nbkit tune job, written {time.strftime('%Y-%m-%d %H:%M')}. Run it with\n"
              f"#   nbkit tune --config {path.name} [--set key=value ...]\n"
              f"#   torchrun --nproc-per-node N -m nbkit tune --config {path.name}\n"
              "# Relative data paths are relative to this file; batch_size is the batch per optimizer step\n"
              "# (split over the processes of a multi-process run).\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100))
    os.replace(tmp, path)
    return path


def _portable_spec(data, job: Path, name: str, namespace) -> str:
    """A data spec that means the same thing read from ``job``'s folder; variables become files."""
    if isinstance(data, str) and data.startswith(("sample:", "hf:")):
        return data
    if isinstance(data, str) and Path(data).expanduser().exists():
        return os.path.relpath(Path(data).expanduser().resolve(), job.parent.resolve())
    if isinstance(data, str) and data not in (namespace or {}):
        return data  # not resolvable here either; running the job says what is wrong with it
    folder = job.with_name(f"{job.stem}-data") / name
    save_splits(load_data(data, namespace), folder)
    return os.path.relpath(folder, job.parent)


class _Dumper(__import__("yaml").SafeDumper):
    """Multi-line strings (templates) as ``|`` blocks, so a job file reads like the notebook cell."""


def _str(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


@dataclasses.dataclass
class JobFile:
    """A job file, read and checked: the tune settings, the prompts, where the file is."""

    path: Path
    settings: dict  # TuneConfig fields
    prompts: dict  # name -> Prompt


def read_job(path: str | os.PathLike, overrides: Sequence[str] = ()) -> JobFile:
    """Read and check a job file; ``overrides`` are ``key=value`` strings (``options.r=16`` reaches into maps).

    Raises:
        ConfigError: naming the key and its line for unknown keys, missing fields and wrong types.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError("config", f"job file {str(path)!r} not found")
    if path.stat().st_size > MAX_BYTES:  # read nothing of a file no job needs: parsing it could take minutes
        raise ConfigError("config", f"job file {str(path)!r} has {path.stat().st_size:,} bytes; a job file is a few "
                          f"KB (at most {MAX_BYTES:,} bytes): its data belongs in a data file it names")
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(document, dict):
        raise ConfigError("config", f"{path} must hold a mapping of settings (key: value lines)")
    lines = _key_lines(root)
    for item in overrides:
        _override(document, item)
        lines[item.split("=", 1)[0].split(".")[0]] = "--set"

    def where(key: str) -> str:
        line = lines.get(key)
        return f"({path.name}, {'from --set' if line == '--set' else f'line {line}'})" if line else f"({path.name})"

    fields = _config_fields()
    for key in document:
        if key not in fields and key not in EXTRA_KEYS:
            raise ConfigError(key, f"is not a tune setting {where(key)}; settings: {', '.join(sorted(fields))}")
    for key in ("prompt", "data"):
        if key not in document:
            raise ConfigError(key, f"is missing {where(key)}: a job needs the prompt(s) and the data to train on")
    settings = {k: v for k, v in document.items() if k not in EXTRA_KEYS}
    for key, value in settings.items():
        if not _fits(value, fields[key]):
            raise ConfigError(key, f"must be {_describe(fields[key])}, got {value!r} {where(key)}")

    for key in ("prompt", "data"):
        values = settings[key] if isinstance(settings[key], list) else [settings[key]]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(key, f"must be a name or a list of names, got {settings[key]!r} {where(key)}")
    declared = document.get("prompts") or {}
    if not isinstance(declared, dict):
        raise ConfigError("prompts", f"must map prompt names to their definitions {where('prompts')}")
    prompts = {}
    known = {f.name for f in dataclasses.fields(Prompt) if f.init} - {"name"}
    for name, definition in declared.items():
        if not isinstance(definition, dict) or "template" not in definition:
            raise ConfigError("prompts", f"{name!r} needs at least a template {where('prompts')}")
        unknown = sorted(set(definition) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a prompt setting of {name!r} {where('prompts')}; "
                              f"settings: {', '.join(sorted(known))}")
        prompts[name] = Prompt(name=name, **definition)
    for name in settings["prompt"] if isinstance(settings["prompt"], list) else [settings["prompt"]]:
        if name not in prompts:
            raise ConfigError("prompt", f"{name!r} is not defined under prompts: {where('prompt')}")

    settings["data"] = _relative_to(settings["data"], path.parent)
    try:
        TuneConfig(**settings)  # the same checks as in a notebook
    except ConfigError as e:
        raise ConfigError(e.field, f"{str(e).split(' ', 1)[1]} {where(e.field)}") from None
    return JobFile(path, settings, prompts)


def job_from_run(run: Run, path: str | os.PathLike) -> Path:
    """Write ``run``'s configuration as a job file: ``nbkit tune --config FILE`` trains it again
    (under a new name unless ``--name`` says otherwise), headless or under torchrun."""
    tasks = run.tasks
    kept = [t["data"] for t in tasks if str(t["data"]).startswith("<")]
    if kept:
        raise NbkitError(f"run {run.name!r} trained on data held in a notebook variable ({kept[0]}), which a "
                         "run does not keep; write the job with %tune ... --export FILE while the variable exists")
    config = {**run.config, "name": None}
    return write_job(path, config, [Prompt.from_dict(t["prompt"]) for t in tasks], [t["data"] for t in tasks])


def tune_arguments(job: "JobFile") -> tuple[Any, Any, dict]:
    """(prompt, data, keyword arguments of ``nbkit.tune``) of a job file, its prompts registered."""
    for prompt in job.prompts.values():
        register_prompt(prompt)
    settings = {k: v for k, v in job.settings.items() if k not in DERIVED}
    prompt, data, options = settings.pop("prompt"), settings.pop("data"), settings.pop("options", {}) or {}
    options.update(settings.pop("objective_options", {}) or {})  # tune tells the objective's from the method's
    return prompt, data, {**settings, **options}


def _relative_to(data, folder: Path):
    """Relative file and folder specs of a job are relative to the job file."""
    def one(spec: str) -> str:
        if spec.startswith(("sample:", "hf:")) or Path(spec).expanduser().is_absolute():
            return spec
        return str(folder.resolve() / spec)

    return [one(d) for d in data] if isinstance(data, list) else one(data)


def _override(document: dict, item: str) -> None:
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError("set", f"takes key=value, got {item!r}")
    value = parse_value(raw)  # Python literals: 3, 1e-4, None, [1, 2]
    if isinstance(value, str):
        try:
            value = yaml.safe_load(raw) if raw else raw  # and YAML's: true, null
        except yaml.YAMLError:
            pass
    *parents, leaf = key.split(".")
    target = document
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(key, f"cannot be set: {part!r} is not a mapping")
    target[leaf] = value


def _key_lines(root) -> dict[str, int]:
    """Top-level key -> its line (1-based) in the file."""
    import yaml

    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in root.value if isinstance(k, yaml.ScalarNode)}


def _fits(value, hint) -> bool:
    allowed = typing.get_args(hint) or (hint,)
    for kind in allowed:
        kind = typing.get_origin(kind) or kind
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind in (int, float) and isinstance(value, bool):
            continue
        if kind is float and isinstance(value, int):
            return True
        if isinstance(kind, type) and kind is not type(None) and isinstance(value, kind):
            return True
    return False


def _describe(hint) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a mapping", type(None): "null"}
    allowed = [typing.get_origin(k) or k for k in (typing.get_args(hint) or (hint,))]
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in allowed)
