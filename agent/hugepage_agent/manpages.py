"""The manual pages, generated so that they cannot drift: hugepage-agent(8)
from the command line parser, hugepage-agent.toml(5) from the configuration
reference in the README (whose keys a test holds equal to the parser's
schema). `python3 -m hugepage_agent.manpages README.md OUTDIR` writes both;
scripts/install-files.sh runs it for every install and package."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from hugepage_agent import __version__

DATE = "2026"


def roff(text: str) -> str:
    """Plain text for a roff line: backslashes, leading dots and quotes escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def inline(md: str) -> str:
    """Markdown inline code and emphasis to roff fonts."""
    out = roff(md)
    out = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", out)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0 and action.metavar is not None:
            names += f" \\fI{roff(str(action.metavar))}\\fR"
        return names
    return f"\\fI{roff(str(action.metavar or action.dest))}\\fR"


def render_command_page(parser: argparse.ArgumentParser) -> str:
    """hugepage-agent(8)."""
    description = parser.description or ""
    intro, _, rest = description.partition("\ncommands:\n")
    exits = rest.split("\nexit codes:", 1)[1] if "\nexit codes:" in rest else ""
    lines = [f'.TH HUGEPAGE-AGENT 8 "{DATE}" "hugepage-agent {__version__}" '
             '"System Administration"',
             ".SH NAME", "hugepage\\-agent \\- explicit huge pages for llama.cpp model servers",
             ".SH SYNOPSIS", "\\fBhugepage\\-agent\\fR [\\fB\\-\\-version\\fR] "
             "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
             ".SH DESCRIPTION", roff(" ".join(intro.split())),
             "Every command takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.", ".SH COMMANDS"]
    for name, sub in _subcommands(parser).items():
        args = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        positional = " ".join(f"\\fI{roff(str(a.metavar or a.dest))}\\fR" for a in args
                              if not a.option_strings)
        lines += [".SS " + f"\\fBhugepage\\-agent {roff(name)}\\fR {positional}".rstrip(),
                  roff(" ".join((sub.description or "").split()))]
        for a in args:
            if a.help and a.help != argparse.SUPPRESS:
                lines += [".TP", _option(a), roff(a.help)]
    lines += [".SH EXIT STATUS", roff(" ".join(exits.split("Configuration:")[0].split())),
              ".SH FILES",
              ".TP", "\\fI/etc/hugepage\\-agent/config.toml\\fR, "
              "\\fI/etc/hugepage\\-agent/config.d/*.toml\\fR",
              "The configuration: see \\fBhugepage\\-agent.toml\\fR(5).",
              ".TP", "\\fI/var/lib/hugepage\\-agent/models/NAME.json\\fR",
              "What \\fBllama\\-server@NAME.service\\fR runs (mode 0640, group hugepage\\-llama).",
              ".TP", "\\fI/etc/sysctl.d/80\\-hugepage\\-agent.conf\\fR",
              "The persisted pool size.",
              ".SH SEE ALSO", "\\fBhugepage\\-agent.toml\\fR(5), \\fBsystemctl\\fR(1), "
              "\\fBsystemd\\-analyze\\fR(1), \\fI/usr/share/doc/hugepage\\-agent/README.md\\fR"]
    return "\n".join(lines) + "\n"


def reference(readme: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The README's configuration reference: its opening paragraph and the
    (key, default, meaning) rows of its table."""
    section = readme.split("## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
    intro = section.strip().split("\n\n", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 3:
            rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return intro, rows


def render_config_page(readme: str) -> str:
    """hugepage-agent.toml(5)."""
    intro, rows = reference(readme)
    lines = [f'.TH HUGEPAGE-AGENT.TOML 5 "{DATE}" "hugepage-agent {__version__}" '
             '"File Formats"',
             ".SH NAME", "hugepage\\-agent.toml \\- configuration of hugepage\\-agent",
             ".SH SYNOPSIS", "\\fI/etc/hugepage\\-agent/config.toml\\fR, "
             "\\fI/etc/hugepage\\-agent/config.d/*.toml\\fR",
             ".SH DESCRIPTION", inline(" ".join(intro.split()))]
    section = None
    for key, default, meaning in rows:
        head = key.split(".")[0]
        if head != section:
            section = head
            title = "[[model]]" if head == "model" else f"[{head}]"
            lines.append(f".SH {roff(title)}")
        lines += [".TP", f"\\fB{roff(key.split('.', 1)[1])}\\fR (default: {inline(default)})",
                  inline(meaning)]
    lines += [".SH EXAMPLE", ".EX", roff('[[model]]\nname = "qwen3-30b"\n'
              'path = "/srv/models/qwen3-30b.gguf"\nargs = ["--port", "8080"]'), ".EE",
              ".SH SEE ALSO", "\\fBhugepage\\-agent\\fR(8), "
              "\\fI/usr/share/doc/hugepage\\-agent/example.toml\\fR"]
    return "\n".join(lines) + "\n"


def write(readme: Path, outdir: Path) -> list[Path]:
    from hugepage_agent.cli import _parser

    text = readme.read_text(encoding="utf-8")
    pages = {outdir / "man8" / "hugepage-agent.8": render_command_page(_parser()),
             outdir / "man5" / "hugepage-agent.toml.5": render_config_page(text)}
    for path, page in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    return list(pages)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 -m hugepage_agent.manpages README.md OUTDIR")
    for p in write(Path(sys.argv[1]), Path(sys.argv[2])):
        print(p)
