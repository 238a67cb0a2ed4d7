"""Registries: the one table of each kind of pluggable part, by name.

Three kinds of part can be swapped by configuration, and each has one registry here:

    DETECTORS    plate detector backends      filled by anpr/reading/detect.py  (config `detector.backend`)
    RECOGNISERS  plate recognisers (OCR)      filled by anpr/reading/ocr.py     (config `pipeline.ocr`)
    SINK_TYPES   places a purpose writes to   filled by anpr/sinks/catalog.py   (config `sinks.NAME.type`)

A part registers itself with a decorator beside its class, so adding one is one class
and one decorator in its stage's module. The config's choices, the CLI's choices and
its help text are read from these tables; nothing else lists the names.

A registry imports the module that fills it the first time it is asked, so reading the
config never needs the heavy model libraries, and no import order has to be kept.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from anpr.errors import ConfigError

Factory = TypeVar("Factory", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[Factory]):
    name: str
    factory: Factory  # makes the part (a class, usually)
    help: str  # one line for `--help` and the README
    devices: tuple[str, ...] = ("cpu",)  # device kinds it runs on ("cpu", "cuda")
    settings: Any = None  # the pydantic model of its own config keys, where it has any


class Registry(Generic[Factory]):
    """Name -> entry, in registration order (the first registered is preferred by `auto`)."""

    def __init__(self, kind: str, module: str) -> None:
        self.kind = kind  # "detector backend", for messages
        self._module = module  # imported on first use: its decorators fill the table
        self._entries: dict[str, Entry[Factory]] = {}

    def register(
        self, name: str, *, help: str, devices: tuple[str, ...] = ("cpu",), settings: Any = None
    ) -> Callable[[Factory], Factory]:
        def add(factory: Factory) -> Factory:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, help, devices, settings)
            return factory

        return add

    def _loaded(self) -> dict[str, Entry[Factory]]:
        importlib.import_module(self._module)
        return self._entries

    def names(self) -> tuple[str, ...]:
        return tuple(self._loaded())

    def entries(self) -> tuple[Entry[Factory], ...]:
        return tuple(self._loaded().values())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def get(self, name: str) -> Entry[Factory]:
        entries = self._loaded()
        if name not in entries:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(entries)}")
        return entries[name]

    def for_device(self, device: str) -> Entry[Factory]:
        """The first registered entry that runs on `device` ("cpu", "cuda" or "cuda:N")."""
        kind = device.split(":")[0]
        for entry in self._loaded().values():
            if kind in entry.devices:
                return entry
        raise ConfigError(f"no {self.kind} runs on {device}")

    def choices(self, *extra: str) -> str:
        """'a, b or c', for help texts and messages."""
        names = [*extra, *self.names()]
        return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


DETECTORS: Registry[Callable[..., Any]] = Registry("detector backend", "anpr.reading.detect")
RECOGNISERS: Registry[Callable[..., Any]] = Registry("OCR backend", "anpr.reading.ocr")
SINK_TYPES: Registry[Callable[..., Any]] = Registry("sink type", "anpr.sinks.catalog")
