"""Name -> factory registries, so presets and saved bundles are looked up by string.

Deployments name a preset or a bundle in their config; a registry turns that string into
code. Registering the same name twice is an error (the second would silently win), and an
unknown name lists the known ones so a typo in a YAML file is obvious (fvcore `Registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any, Generic, NamedTuple, TypeVar, get_args, get_origin, get_type_hints

from torch import nn

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping that refuses duplicates and explains unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`; without `obj`, return a decorator that does."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn: T) -> T:
            self._add(name, fn)
            return fn

        return decorator

    def _add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class Architecture(NamedTuple):
    """How to rebuild a model from the `config` dict stored in a bundle's config.json."""

    config_cls: type
    build: Callable[[Any], nn.Module]


MODELS: Registry[Callable[[], nn.Module]] = Registry("model preset")
ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def config_from_dict(config_cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (possibly nested) config dataclass from its `asdict` JSON form.

    JSON turns tuples into lists and nested dataclasses into dicts; this undoes both,
    driven by the dataclass's type hints. Unknown or missing keys are errors, so a bundle
    written by different code is rejected rather than half understood.
    """
    if not is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise TypeError(f"config for {config_cls.__name__} must be a dict, got {type(data).__name__}")
    hints = get_type_hints(config_cls)
    known = {f.name for f in fields(config_cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields: {unknown}")
    kwargs = {name: _coerce(hints[name], value) for name, value in data.items()}
    return config_cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    args = get_args(hint)
    if is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if args and origin is not dict and origin is not list:
        # Optional / union: use the first dataclass or tuple member that fits the value.
        for arg in args:
            if arg is type(None):
                continue
            if (is_dataclass(arg) and isinstance(value, dict)) or (
                get_origin(arg) is tuple and isinstance(value, list | tuple)
            ):
                return _coerce(arg, value)
    return value
