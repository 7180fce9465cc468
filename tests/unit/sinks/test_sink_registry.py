"""The sink registry (loader/sinks/registry.py) is the one list of sinks: it names every sink class in
loader/sinks, each under its own name, each in a folder of the same shape, and each declares its
capabilities and the whole contract."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import loader.sinks
from loader.config import load_config
from loader.sinks import REGISTRY, enabled_names, enabled_sinks, sink_class
from loader.sinks.base import Capabilities, Sink
from tests.support.cli import write_config

# The contract's methods, as the Sink protocol declares them (loader/sinks/base.py).
CONTRACT = tuple(name for name, member in vars(Sink).items() if callable(member) and not name.startswith("_"))


def test_the_contract_is_read_from_the_protocol() -> None:
    assert {"location", "begin", "write_part", "finish", "discard_run", "read_back", "probe"} <= set(CONTRACT)


def _sink_classes_in_package() -> set[type]:
    """Every class defined in a loader.sinks module that implements begin / write_part / finish (the
    `Sink` protocol itself aside)."""
    found: set[type] = set()
    for module_info in pkgutil.walk_packages(loader.sinks.__path__, prefix="loader.sinks."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            implements = all(callable(getattr(cls, m, None)) for m in ("begin", "write_part", "finish"))
            if cls.__module__ == module.__name__ and implements and not getattr(cls, "_is_protocol", False):
                found.add(cls)
    return found


def test_the_registry_names_every_sink_class() -> None:
    assert {sink_class(name) for name in REGISTRY} == _sink_classes_in_package()
    assert [sink_class(name).name for name in REGISTRY] == list(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_sink_declares_capabilities_and_the_whole_contract(name: str) -> None:
    cls = sink_class(name)
    assert isinstance(cls.capabilities, Capabilities)
    assert cls.capabilities.holds in ("latest", "versions")
    # what a replay does, asserted exactly by the conformance suite
    # (tests/integration/test_sink_conformance.py)
    assert cls.capabilities.replay_of_landed in ("skips", "rewrites")
    assert cls.capabilities.replay_of_interrupted in ("whole", "rest")
    missing = [m for m in CONTRACT if not callable(getattr(cls, m, None))]
    assert missing == [], f"{name} lacks {missing}"


#: What every sink's folder holds, each in a file of its own (loader/sinks/__init__.py).
FOLDER_SHAPE = {"__init__.py", "config.py", "capabilities.py", "facts.py", "dimensions.py", "read_back.py",
                "sink.py"}


def test_each_sink_is_one_folder_of_the_same_shape() -> None:
    root = Path(loader.sinks.__file__).parent
    folders = {p.parent.name for p in root.glob("*/__init__.py")}
    assert folders == set(REGISTRY), "each sink folder is in the registry, and each registered sink a folder"
    for name, entry in REGISTRY.items():
        assert entry.package == f"loader.sinks.{name}"
        files = {p.name for p in (root / name).glob("*.py")}
        assert files >= FOLDER_SHAPE, f"loader/sinks/{name}/ lacks {sorted(FOLDER_SHAPE - files)}"
        assert sink_class(name).__module__ == f"loader.sinks.{name}.sink"
        assert entry.settings_class().__module__ == f"loader.sinks.{name}.config"


def test_the_config_has_a_block_per_registered_sink_and_nothing_else() -> None:
    from loader.config import SinksConfig

    assert list(SinksConfig.model_fields) == list(REGISTRY)
    for name, entry in REGISTRY.items():
        assert SinksConfig.model_fields[name].annotation is entry.settings_class()


def test_enabled_sinks_follow_the_config_and_only(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, sinks={"parquet": {"enabled": True},
                                                       "delta": {"enabled": True}}))
    assert enabled_names(config) == ["parquet", "delta"]
    assert [s.name for s in enabled_sinks(config)] == ["parquet", "delta"]
    assert [s.name for s in enabled_sinks(config, only=("delta",))] == ["delta"]
    assert all(s.probe() is None for s in enabled_sinks(config))  # a writable temp folder
