"""The commands and code of README.md, docs/installation.md and docs/cli.md work as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import shared_file
from tests.markdown_blocks import python_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ERA5 = "era5_t2m_2019-03_uk.nc"


def documented_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every concrete ``xlatda demo|run|bench`` command line."""
    found = []
    for page in PAGES:
        for cmd in re.findall(r"(?:^|\$ |&& |`)(xlatda (?:demo|run|bench)(?=[ `\n]|$)[^`\n&#]*)",
                              page.read_text(), flags=re.M):
            cmd = cmd.strip()
            if "[" in cmd or "|" in cmd or "my.yaml" in cmd or cmd.endswith("CONFIG.yaml"):
                continue  # synopses and the made-up file of the error example
            if cmd in ("xlatda run", "xlatda bench"):
                continue  # the command named in prose, not a command line
            found.append((page.name, cmd))
    return sorted(set(found))


COMMANDS = documented_commands()


def test_the_documented_commands_are_found():
    cmds = [c for _, c in COMMANDS]
    assert "xlatda demo" in cmds
    assert any(c.startswith("xlatda run examples/configs/era5_t2m_uk.yaml") for c in cmds)
    assert any(c.startswith("xlatda bench") for c in cmds)


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}:{c}" for p, c in COMMANDS])
def test_documented_command_runs(page, command, tmp_path, monkeypatch, capsys):
    from xlatda.cli import main

    args = shlex.split(command)[1:]
    if args[0] == "demo":  # runs in tests/test_demo.py (small, and full size under -m slow)
        with pytest.raises(SystemExit) as done:
            main([*args, "--help"])
        assert done.value.code == 0
        return
    if args[0] == "run":
        if "/path/to/shared/data" in args:
            args[args.index("/path/to/shared/data")] = str(shared_file(ERA5).parent)
        args = [str(ROOT / a) if a.endswith(".yaml") else a for a in args] + ["--dry-run"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0, command
    assert capsys.readouterr().out.strip()


def test_readme_commands_are_what_ci_runs():
    """The README's install-and-test command is the one .ci/run executes (kept in step)."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line for line in readme.splitlines() if line.endswith("python -m pytest"))
    for step in test_cmd.split(" && "):
        if step.startswith(("python3 -m venv", ". ")):
            continue  # CI makes its own venv
        assert step in ci, step
    assert "python -m pytest -m slow" in readme and "-m slow" in ci
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'xlatda = "xlatda.cli:main"' in scripts  # the `xlatda demo` entry point


def test_installation_page_check_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns, _ = run_blocks(ROOT / "docs" / "installation.md")
    assert "model" in ns


def test_cli_page_reads_a_real_result(tmp_path, monkeypatch):
    """docs/cli.md's python block on the result of a short run of the real-data config."""
    data = shared_file(ERA5).parent
    cfg = yaml.safe_load((ROOT / "examples/configs/era5_t2m_uk.yaml").read_text())
    cfg["model"]["epochs"] = 3
    cfg["assimilate"]["end"] = "2019-03-23T23:00"
    cfg["observations"]["path"] = str(ROOT / "examples/configs" / cfg["observations"]["path"])
    cfg["output"]["figure"] = False
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    from xlatda.cli import main

    assert main(["run", str(path), "--data-dir", str(data), "--quiet"]) == 0
    assert (tmp_path / "era5_t2m_uk.nc").exists()
    blocks = python_blocks(ROOT / "docs" / "cli.md")
    assert len(blocks) == 1
    ns, _ = run_blocks(ROOT / "docs" / "cli.md")
    assert {"analysis", "background", "climatology"} <= set(ns["tree"]["scores"].run.values)
    assert "t2m" in ns["analysis"]
