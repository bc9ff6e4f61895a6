"""The README, Procfile and compose file stay true to the code."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from shared.config import IngestSettings, WorkerSettings, settings_from_mapping
from shared.signatures import SCHEMES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    after = README.split(marker, 1)[1]
    match = re.search(r"```\w*\n(.*?)```", after, re.S)
    assert match, f"no code block after {marker}"
    return match.group(1)


def test_configuration_reference_is_valid_and_complete() -> None:
    text = _block_after("<!-- config-reference -->")
    raw = tomllib.loads(text)
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    settings = settings_from_mapping(raw, environ={n: "x" for n in names})
    assert settings.ingest == IngestSettings()
    assert settings.worker == WorkerSettings()
    for section, cls in (("ingest", IngestSettings), ("worker", WorkerSettings)):
        for f in dataclasses.fields(cls):
            assert f.name in raw[section], f"[{section}] {f.name} missing from the README"


def test_every_scheme_is_documented() -> None:
    for name in SCHEMES:
        assert f"| `{name}` |" in README


def test_ci_runs_the_readme_test_command() -> None:
    command = _block_after("<!-- test-command -->").strip()
    assert command.endswith("python -m pytest")
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def test_compose_and_procfile_use_the_same_commands() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    procfile = (ROOT / "Procfile").read_text()
    for sub in ("db upgrade", "serve", "worker"):
        assert f"hookline {sub}" in procfile
        assert '["hookline", "' + '", "'.join(sub.split()) + '"' in compose
