"""The README, Procfile and compose file stay true to the code."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click

from hookline import exits
from hookline.cli import main
from shared.config import Settings, settings_from_mapping
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
    settings = settings_from_mapping(raw, environ={n: "x" * 32 for n in names})
    # every section of the configuration ([ingest], [worker], ...), with every key, at its default
    sections = [
        f.name for f in dataclasses.fields(Settings) if dataclasses.is_dataclass(f.default_factory)
    ]
    assert sections
    for section in sections:
        value = getattr(settings, section)
        for f in dataclasses.fields(value):
            assert f.name in raw[section], f"[{section}] {f.name} missing from the README"
            if f.default is not None:  # None: a secret, shown as "${NAME}"
                got = getattr(value, f.name)
                assert got == f.default, f"[{section}] {f.name} in the README is not the default"


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


# -- the Commands section ------------------------------------------------------------------

COMMON_OPTIONS = {"--config", "--help"}  # stated once, above the table


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    """Every command under ``group``, groups included, as ("dlq replay", command)."""
    for name, command in sorted(group.commands.items()):
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def _rows() -> dict[str, tuple[list[str], str]]:
    """The README's Commands table: command name -> (its arguments, its options cell)."""
    table = README.split("<!-- commands -->", 1)[1].strip().split("\n\n", 1)[0]
    rows: dict[str, tuple[list[str], str]] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, line
        words = cells[0].strip("`").split()
        assert words[0] == "hookline", line
        name = [w for w in words[1:] if re.fullmatch(r"[a-z-]+", w)]
        rows[" ".join(name)] = (words[1 + len(name) :], cells[1].replace("\\|", "|"))
    return rows


def _documented_options(cell: str) -> dict[str, str | None]:
    """``--name METAVAR`` spans of a row's options cell -> {name: metavar or None}."""
    spans = [s.split(" ", 1) for s in re.findall(r"`(--[^`]+)`", cell)]
    return {s[0]: (s[1] if len(s) > 1 else None) for s in spans}


def test_every_option_of_every_command_has_help_text() -> None:
    for name, command in _commands(main):
        assert command.help, f"hookline {name} has no help text"
        for option in _options(command):
            assert option.help, f"hookline {name} {option.opts[0]} has no help text"


def test_the_commands_table_and_the_code_agree_both_ways() -> None:
    rows = _rows()
    leaves = {n: c for n, c in _commands(main) if not isinstance(c, click.Group)}
    # each command is in the table, and each row is a command
    assert sorted(rows) == sorted(leaves)
    for name, command in leaves.items():
        arguments, cell = rows[name]
        # its arguments, as --help names them
        expected = [
            p.metavar or (p.name or "").upper()
            for p in command.params
            if isinstance(p, click.Argument)
        ]
        assert arguments == expected, f"hookline {name}: README {arguments}, code {expected}"
        # each option in --help is in its row, with the same metavar, and the reverse
        documented = _documented_options(cell)
        options = {o.opts[0]: o for o in _options(command) if o.opts[0] not in COMMON_OPTIONS}
        assert sorted(documented) == sorted(options), f"hookline {name}"
        for opt_name, option in options.items():
            metavar = None if option.is_flag else option.metavar
            assert documented[opt_name] == metavar, f"hookline {name} {opt_name}"
            if option.multiple:
                assert f"`{opt_name} {metavar}` (repeatable" in cell, f"hookline {name} {opt_name}"
            # a default --help shows is stated too (serve --host 0.0.0.0, --port 8080...)
            if option.show_default:
                assert f"`{opt_name} {metavar}` (default `{option.default}`" in cell, opt_name
        # and every command takes the options stated once above the table
        assert COMMON_OPTIONS.issubset({o.opts[0] for o in _options(command)} | {"--help"})
    intro = README.split("## Commands", 1)[1].split("<!-- commands -->", 1)[0]
    for opt_name in COMMON_OPTIONS:
        assert f"`{opt_name}" in intro
    # the groups' own options (hookline --version)
    for name, command in [("", main), *_commands(main)]:
        if isinstance(command, click.Group):
            for option in _options(command):
                assert (
                    f"`{' '.join(['hookline', name, option.opts[0]]).replace('  ', ' ')}`" in intro
                )


def test_every_exit_status_is_documented() -> None:
    block = README.split("<!-- exit-statuses -->", 1)[1].split("\n\n", 1)[0]
    documented = {int(n) for n in re.findall(r"^- `(\d+)`:", block, re.M)}
    statuses = {v for k, v in vars(exits).items() if k.startswith("EXIT_")}
    assert documented == statuses


def test_every_python_example_compiles() -> None:
    """A handler the README shows (the tour's fixed one, the handler section's) is whole
    Python, not a function left without a body."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        text = textwrap.dedent(block)
        compile(text, "README.md", "exec")
        assert "from workers import" not in text and "shared.errors" not in text


def test_the_deploy_configuration_loads_with_its_secrets_from_the_environment() -> None:
    from shared.config import load_settings

    text = (ROOT / "deploy" / "hookline.toml").read_text()
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    settings = load_settings(
        ROOT / "deploy" / "hookline.toml", environ={n: "x" * 32 for n in names}
    )
    assert set(settings.sources) == {"moncash", "nowallet", "helloasso"}
    # the sentinel URL its comment shows is one hookline accepts
    [url] = re.findall(r"HOOKLINE_REDIS_URL=(redis\+sentinel://\S+)", text)
    from shared.redisconn import parse_sentinel

    target = parse_sentinel(url)
    assert target is not None and target.service == "hookline" and len(target.sentinels) == 3
    # and every name it reads from the environment is in .env.example
    example = (ROOT / ".env.example").read_text()
    assert all(f"{n}=" in example for n in names)


def test_the_compose_file_is_valid_for_compose_itself(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import pytest

    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (the file is also checked by reading)")
    # in a folder of its own: the services read .env, which is not committed
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text().replace("=change-me", "=x"))
    (tmp_path / "docker-compose.yml").write_text((ROOT / "docker-compose.yml").read_text())
    for profile in ([], ["--profile", "ha"]):
        result = subprocess.run(
            [binary, *profile, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_the_test_command_names_every_debian_package_ci_installs_for_it() -> None:
    # what .ci/run installs with apt-get before running the README's test command
    ci = (ROOT / ".ci" / "run").read_text()
    installed = {
        package
        for line in re.findall(r"apt-get install -y -q ([a-z0-9 .+-]+)", ci)
        for package in line.split()
    }
    assert {"chromium", "chromium-driver", "docker-compose"} <= installed
    about_the_tests = README.split("<!-- test-command -->", 1)[1].split("\n## ", 1)[0]
    named = {
        word
        for command in re.findall(r"`(?:sudo )?apt(?:-get)? install ([^`]+)`", about_the_tests)
        for word in command.split()
    }
    assert installed <= named, f"the README's test command omits {sorted(installed - named)}"


def test_every_file_the_readme_names_exists() -> None:
    named = set(
        re.findall(r"`((?:tests|bench|chaos|docs|deploy|shared|workers)/[\w./-]+\.\w+)`", README)
    )
    assert "tests/test_readme.py" in named
    # the one a reader is told to write
    named.discard("shared/signatures/myprovider.py")
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == [], f"the README names files that do not exist: {missing}"
