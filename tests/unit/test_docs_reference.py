"""The configuration reference (docs/configuration.md) is generated from the config models at every
docs build (docs/hooks/pages.py): every key of every model is in it, under the key path users write."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from loader.config import LoaderConfig, RunConfig, SourceConfig

ROOT = Path(__file__).resolve().parents[2]


def _reference() -> str:
    spec = importlib.util.spec_from_file_location("docs_pages", ROOT / "docs" / "hooks" / "pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.config_reference()


def _section(reference: str, title: str) -> str:
    start = reference.index(f"### {title}\n")
    rest = reference[start + 1:]
    end = rest.find("\n### ")
    return rest if end < 0 else rest[:end]


def test_every_key_of_the_config_is_in_the_generated_reference() -> None:
    reference = _reference()
    top = _section(reference, "top level")
    assert all(f"| `{name}` |" in top for name in LoaderConfig.model_fields if name != "config_path")
    run = _section(reference, "`run`")
    assert all(f"| `{name}` |" in run for name in RunConfig.model_fields)
    assert re.search(r"\| `max_batch_rows` \| integer \| `1000000` \|", run)
    sources = _section(reference, "`sources.<name>`")
    assert all(f"| `{name}` |" in sources for name in SourceConfig.model_fields)
    assert "| `lookback` | duration" in sources and "`1h`" in sources
    assert "### `sources.<name>.deletes`" in reference and "### `regions.<name>`" in reference
    # the key users write, not the attribute
    assert "| `schema` |" in _section(reference, "`sinks.snowflake`")


def test_the_configuration_page_asks_for_the_reference() -> None:
    assert "<!-- config-reference -->" in (ROOT / "docs" / "configuration.md").read_text()
