"""Whole-file validation of a TOML model registry, every problem at once, with locations.

:func:`build_registry` is what :func:`fleet.registry.load_registry` runs. It validates each
section with the pydantic models of :mod:`fleet.registry`, then the cross references
(presets -> models -> providers -> tasks), collecting problems as
``<toml path> (line N): <what is wrong and how to fix it>`` instead of stopping at the first.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from breaker_service.policy import BreakerPolicy
from fleet.errors import RegistryError
from fleet.registry import ModelInfo, Preset, ProviderInfo, Registry, TaskProfile

log = logging.getLogger("fleet.registry")
M = TypeVar("M", bound=BaseModel)

#: The registry shipped as package data. Located from this file rather than with
#: importlib.resources.files("fleet"), which fails when ``fleet`` resolves as a namespace
#: package (seen with setuptools editable installs run from another directory).
SHIPPED = Path(__file__).parent / "data" / "registry.toml"

_TOP_LEVEL = {"default_preset", "breaker", "providers", "models", "tasks", "presets"}
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


class LineIndex:
    """Maps TOML paths (``models[3].tier``, ``presets.x.routes.y``) to 1-based line numbers.

    A light scan of table headers and ``key =`` lines, good enough for locating problems;
    the document itself is parsed by :mod:`tomllib`.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        arrays: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                name = _dotted(header.group(2))
                if header.group(1) == "[[":
                    arrays[name] = arrays.get(name, -1) + 1
                    table = f"{name}[{arrays[name]}]"
                else:
                    first, _, rest = name.partition(".")
                    table = f"{first}[{arrays[first]}].{rest}" if first in arrays else name
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                path = f"{table}.{key.group(1).strip(chr(34) + chr(39))}" if table else key.group(1)
                self.lines.setdefault(path, number)

    def line_of(self, path: str) -> int | None:
        """Line of ``path`` or of its nearest located parent; None when nothing matches."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


class _Problems:
    """Collects located problems and warnings."""

    def __init__(self, index: LineIndex) -> None:
        self.index = index
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def where(self, path: str) -> str:
        line = self.index.line_of(path)
        return f"{path} (line {line})" if line else path

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{self.where(path)}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.where(path)}: {message}")

    def model(self, path: str, cls: type[M], data: Any) -> M | None:
        """Validate ``data`` as ``cls``; on failure record each error under ``path``."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                self.add(path + loc, msg)
            return None


def _table(problems: _Problems, doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, f"must be a table ([{name}.NAME] sections), got {type(value).__name__}")
        return {}
    return value


def _named(problems: _Problems, path: str, name: str, key: str, entry: Any) -> Any:
    """``entry`` with its table key filled in as ``key`` (mismatch is a problem)."""
    if not isinstance(entry, dict):
        problems.add(path, f"must be a table, got {type(entry).__name__}")
        return None
    if key in entry and entry[key] != name:
        problems.add(f"{path}.{key}", f"{entry[key]!r} differs from the table name {name!r}")
    return {**entry, key: name}


def _policy(problems: _Problems, path: str, base: BreakerPolicy, override: Any) -> BreakerPolicy:
    if not override:
        return base
    merged = problems.model(path, BreakerPolicy, {**base.model_dump(), **override})
    return merged or base


def _providers(p: _Problems, doc: dict[str, Any], defaults: BreakerPolicy) -> dict[str, Any]:
    out: dict[str, ProviderInfo] = {}
    for name, entry in _table(p, doc, "providers").items():
        path = f"providers.{name}"
        info = p.model(path, ProviderInfo, _named(p, path, name, "name", entry))
        if info is not None:
            _policy(p, f"{path}.breaker", defaults, info.breaker)
            out[name] = info
    return out


def _models(
    p: _Problems, doc: dict[str, Any], providers: dict[str, ProviderInfo], defaults: BreakerPolicy
) -> dict[str, ModelInfo]:
    entries = doc.get("models", [])
    if not isinstance(entries, list):
        p.add("models", "must be an array of tables ([[models]] sections)")
        return {}
    out: dict[str, ModelInfo] = {}
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        path = f"models[{i}]"
        model = p.model(path, ModelInfo, entry)
        if model is None:
            continue
        if model.key in first:
            earlier = p.where(f"models[{first[model.key]}]")
            p.add(
                f"{path}.name",
                f"duplicate model {model.key!r} (first defined at {earlier}); "
                "a model name must be unique within its provider",
            )
            continue
        first[model.key] = i
        if model.provider not in providers:
            p.add(
                f"{path}.provider",
                f"unknown provider {model.provider!r}; declare [providers.{model.provider}] "
                f"or use one of: {', '.join(sorted(providers)) or 'none'}",
            )
            continue
        try:
            provider_policy = defaults.merged(providers[model.provider].breaker)
        except ValidationError:  # already reported under providers.NAME.breaker
            provider_policy = defaults
        _policy(p, f"{path}.breaker", provider_policy, model.breaker)
        out[model.key] = model
    return out


def _tasks(p: _Problems, doc: dict[str, Any]) -> dict[str, TaskProfile]:
    out: dict[str, TaskProfile] = {}
    for name, entry in _table(p, doc, "tasks").items():
        path = f"tasks.{name}"
        task = p.model(path, TaskProfile, _named(p, path, name, "task_type", entry))
        if task is not None:
            out[name] = task
    return out


def _check_model_ref(
    p: _Problems, path: str, key: str, models: dict[str, ModelInfo], task: TaskProfile | None
) -> ModelInfo | None:
    model = models.get(key)
    if model is None:
        hint = [k for k in models if k.endswith("/" + key) or k == key]
        did = f"; did you mean {' or '.join(hint)}?" if hint else ""
        p.add(path, f"unknown model {key!r}: use a model key provider/name{did}")
        return None
    if task is not None and task.max_tokens > model.context_window:
        p.add(
            path,
            f"task {task.task_type!r} max_tokens={task.max_tokens} exceeds the context window "
            f"of {key} ({model.context_window}); lower tasks.{task.task_type}.max_tokens "
            "or route this task to a larger model",
        )
    return model


def _check_route(
    p: _Problems,
    path: str,
    task_type: str,
    spec: Any,
    *,
    models: dict[str, ModelInfo],
    tasks: dict[str, TaskProfile],
) -> None:
    task = tasks.get(task_type)
    if task is None:
        p.add(path, f"unknown task type {task_type!r}; known: {', '.join(sorted(tasks))}")
    primary = _check_model_ref(p, f"{path}.primary", spec.primary, models, task)
    seen = {spec.primary}
    for j, key in enumerate(spec.backups):
        bpath = f"{path}.backups[{j}]"
        if key == spec.primary:
            p.add(bpath, f"backup {key!r} is the primary itself; remove it or pick another model")
            continue
        if key in seen:
            p.add(bpath, f"backup {key!r} is listed twice; remove the repeat")
            continue
        seen.add(key)
        backup = _check_model_ref(p, bpath, key, models, task)
        if primary and backup and primary.provider == backup.provider:
            message = (
                f"backup {key} shares provider {primary.provider!r} with primary "
                f"{primary.key}: one provider outage takes both"
            )
            p.warn(bpath, message)


def _presets(
    p: _Problems, doc: dict[str, Any], models: dict[str, ModelInfo], tasks: dict[str, TaskProfile]
) -> dict[str, Preset]:
    out: dict[str, Preset] = {}
    for name, entry in _table(p, doc, "presets").items():
        path = f"presets.{name}"
        preset = p.model(path, Preset, _named(p, path, name, "name", entry))
        if preset is None:
            continue
        for task_type in sorted(set(tasks) - set(preset.routes)):
            p.add(
                f"{path}.routes",
                f"no route for task type {task_type!r}; add "
                f'{task_type} = {{ primary = "provider/model", backups = [...] }}',
            )
        for task_type, spec in preset.routes.items():
            _check_route(
                p, f"{path}.routes.{task_type}", task_type, spec, models=models, tasks=tasks
            )
        out[name] = preset
    return out


def _read(path: Path | None) -> tuple[str, str]:
    if path is None:
        return SHIPPED.read_text(encoding="utf-8"), "package:fleet/data/registry.toml"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise RegistryError(f"cannot read registry file {path}: {exc.strerror or exc}") from exc


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"registry {source} is not valid TOML", [str(exc)]) from exc


def build_registry(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    active_preset: str | None = None,
) -> Registry:
    """Read, validate and build a :class:`Registry` (see :func:`fleet.registry.load_registry`)."""
    text, source = _read(path)
    doc = _parse(text, source)
    p = _Problems(LineIndex(text))
    for extra in sorted(set(doc) - _TOP_LEVEL):
        p.add(extra, f"unknown top-level key; expected one of {', '.join(sorted(_TOP_LEVEL))}")
    defaults = p.model("breaker", BreakerPolicy, doc.get("breaker", {})) or BreakerPolicy()
    providers = _providers(p, doc, defaults)
    models = _models(p, doc, providers, defaults)
    tasks = _tasks(p, doc)
    presets = _presets(p, doc, models, tasks)
    default = doc.get("default_preset")
    if not isinstance(default, str) or default not in presets:
        p.add("default_preset", f"{default!r} is not a preset; use one of {sorted(presets)}")
    if active_preset is not None and active_preset not in presets:
        p.add("presets", f"active preset {active_preset!r} is not defined in this file")
    active = active_preset or (default if isinstance(default, str) else "")
    _credentials(
        p, presets.get(active), models, providers, os.environ if environ is None else environ
    )
    if p.errors:
        raise RegistryError(f"registry {source} has {len(p.errors)} problem(s)", p.errors)
    for warning in p.warnings:
        log.warning("registry_warning source=%s %s", source, warning)
    return Registry(
        breaker=defaults, providers=providers, models=models, tasks=tasks, presets=presets,
        default_preset=str(default), source=source, warnings=p.warnings,
    )  # fmt: skip


def _credentials(
    p: _Problems,
    preset: Preset | None,
    models: dict[str, ModelInfo],
    providers: dict[str, ProviderInfo],
    environ: Mapping[str, str],
) -> None:
    """A problem per provider of the active ``preset`` whose API-key variable is unset."""
    if preset is None:
        return
    used = {
        models[key].provider
        for spec in preset.routes.values()
        for key in (spec.primary, *spec.backups)
        if key in models
    }
    for name in sorted(used):
        env = providers[name].api_key_env
        if env and not environ.get(env):
            p.add(
                f"providers.{name}.api_key_env",
                f"environment variable {env} is not set, and the active preset "
                f"{preset.name!r} routes to {name}; export {env}=<key> or choose another preset",
            )
