"""Docs that stay true: every ``specs-rl ...`` command in README.md and docs/*.md parses.

Each command is taken from the code blocks (continued lines joined, comments and the shell around it cut off) and
from inline code, and parsed without running: the subcommand exists (``specs_rl.cli.COMMANDS``), a ``--config`` file
exists, and the recipe's own ``parse(argv)`` accepts the command line (every ``key=value`` a known key of that
recipe's config, of the right type, the method grid valid), which loads no model and writes no file.

A command that is meant not to parse (a placeholder, a pattern) is in :data:`EXEMPT` with its reason; an exemption
that no longer matches any command in the docs is an error too, so the list cannot rot. A subcommand's bare name
in a sentence (inline ``specs-rl tune``) names the command: only that it exists is checked; the same words in a
code block are parsed as a command.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from specs_rl import cli
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# command (as extracted: the words after `specs-rl`, joined by one space) -> why it is not parsed
EXEMPT: dict[str, str] = {
    "search method=gsi": "an example of a preset applied to any search config, shown without one",
    "compare --config out/chosen.yaml": "a file the tune run writes into its out directory",
    "COMMAND --help": "a placeholder for any subcommand",
    "serve --config ...": "a placeholder for any run config",
    "compare --config configs/eval/math500_qwen25.yaml backend=vllm data.shard=i/k vllm.draft.url=http://HOST_i:P1 "
    "vllm.target.url=http://HOST_i:P2 vllm.prm.url=http://HOST_i:P3 out=runs/m500-iofk": (
        "one line per machine i of k: the shard and the URLs are that machine's"
    ),
    "tune --config configs/tune/toymath.yaml 'tune.storage=$SPECS_TUNE_DB' out=runs/tune-$(hostname)": (
        "expanded by the shell and by the recipe on each worker of a shared study"
    ),
}

# `specs-rl` (or `.venv/bin/specs-rl`) where a shell command starts: at the start of the text or after `&&`, `;`,
# `||`, `$(`, with environment assignments before it (`SPECS_RL_X=1 specs-rl ...`); not `specs-rl` in prose
WORD = re.compile(r"(?:^|&&|;|\|\||\$\()\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:\S*/)?specs-rl(?:\s+|$)")


def _join_continued(text: str) -> list[str]:
    lines, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    return lines + ([buf] if buf else [])


def _command(text: str) -> str | None:
    """The words after ``specs-rl`` in ``text`` up to the end of that shell command (comments, ``&&``, ``;``,
    ``|`` and a closing backtick end it), or None when ``text`` runs no ``specs-rl``."""
    m = WORD.search(text)
    if m is None:
        return None
    rest = text[m.end() :]
    try:
        lex = shlex.shlex(rest, posix=False, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        words = []
        for w in lex:
            if w in (";", "&&", "||", "|", "&"):
                break
            words.append(w)
    except ValueError:  # an unclosed quote: the prose around it, not a command
        return None
    return " ".join(words).strip() or None


FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", flags=re.S | re.M)  # a fenced block, indented or not


def commands() -> list[tuple[str, str, str]]:
    """(page, command, ``block`` or ``inline``) of every ``specs-rl`` command in the pages, in order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        name = page.relative_to(REPO).as_posix()
        blocks = FENCE.findall(text)
        for block in blocks:
            for line in _join_continued(block):
                cmd = _command(line)
                if cmd:
                    found.append((name, cmd, "block"))
        prose = FENCE.sub("", text)
        for code in re.findall(r"`([^`]+)`", prose):  # inline code may wrap onto the next line
            cmd = _command(" ".join(code.split()))
            if cmd:
                found.append((name, cmd, "inline"))
    return found


def _split(cmd: str) -> tuple[str, list[str]]:
    words = shlex.split(cmd)
    for n in (2, 1):
        key = " ".join(words[:n])
        if key in cli.COMMANDS:
            return key, words[n:]
    raise AssertionError(f"`specs-rl {cmd}`: no such subcommand; known: {', '.join(cli.COMMANDS)}")


ALL = commands()


def test_the_docs_hold_commands_and_every_exemption_is_used():
    cmds = {c for _, c, _ in ALL}
    assert len(cmds) >= 30, sorted(cmds)
    assert {"demo", "demo full"} <= cmds  # the README's first command and the full table
    stale = sorted(set(EXEMPT) - cmds)
    assert not stale, f"exemptions no command in the docs uses any more: {stale}"


@pytest.mark.parametrize(("where", "cmd", "kind"), sorted(set(ALL)), ids=lambda x: x)
def test_command_parses(where, cmd, kind, monkeypatch):
    if cmd in EXEMPT:
        pytest.skip(EXEMPT[cmd])
    monkeypatch.chdir(REPO)  # the docs' paths are the repository's
    sub, argv = _split(cmd)
    if kind == "inline" and not argv:
        return  # `specs-rl tune` in a sentence names the command (it exists); a code block's is parsed
    if "--help" in argv or "-h" in argv:
        return  # the subcommand exists; --help takes no config
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        assert Path(path).is_file(), f"{where}: `specs-rl {cmd}`: no config file {path}"
    module = importlib.import_module(cli.COMMANDS[sub][0])
    assert hasattr(module, "parse"), f"{cli.COMMANDS[sub][0]} has no parse(argv)"
    try:
        module.parse(argv)
    except Exception as e:  # noqa: BLE001 - the message names the command and the page
        pytest.fail(f"{where}: `specs-rl {cmd}` does not parse: {type(e).__name__}: {e}")


def test_every_subcommand_parses_without_running():
    """Each recipe the launcher knows has ``parse(argv)``, and it refuses an unknown key in one error."""
    from specs_rl.config import ConfigError

    for sub, (module_name, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "parse", None)), module_name
        if sub.startswith("train") or sub == "merge":
            continue  # TRL's parser (its own errors) / merge's options are checked in their own tests
        with pytest.raises(ConfigError, match="colour"):
            module.parse(["colour=1"])


def test_the_extractor_finds_what_a_reader_would_run():
    assert _command(".venv/bin/specs-rl demo out=runs/demo  # minutes") == "demo out=runs/demo"
    assert _command("pip install -e . && .venv/bin/specs-rl demo && ls") == "demo"
    assert _command("specs-rl plan") == "plan"
    assert _command("no command here") is None
    joined = _join_continued("specs-rl compare --config c.yaml \\\n    out=x\n")
    assert _command(joined[0]) == "compare --config c.yaml out=x"


def test_ci_runs_the_readmes_first_two_commands():
    """.ci/run is the README's first command (set up and run the demo) and its second (the tests), word for word."""
    blocks = [b.strip() for b in FENCE.findall((REPO / "README.md").read_text())]
    ci = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "export "))
    ]
    assert ci == blocks[:2]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings(page):
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            heads = {
                _anchor(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text()), flags=re.M)
            }
            assert anchor in heads, f"{page.name}: link to {target}: no such heading in {dest.name}"
