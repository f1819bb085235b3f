"""The site's generated pages, written at build time by mkdocs-gen-files (``mkdocs.yml``: ``gen-files``).

- ``reference/cli.md``: every ``radargate`` command's ``--help``, from ``radargate.cli.build_parser()``.
- ``reference/config.md``: every config field (name, type, default, allowed values, meaning) from the config
  dataclasses (``reference.py`` reads them).
- ``reference/api.md``: the library's API from its docstrings (mkdocstrings' ``:::`` directives).
- ``reports/``: the study reports and the benchmark notes, copied from ``reports/`` and ``benchmarks/`` (where the
  code that makes them writes them), with their plots and their links rewritten for the site.

None of these pages is kept in ``docs/``: they are made from the code and the reports each time, so they cannot
drift.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mkdocs_gen_files
import reference

ROOT = reference.ROOT


def main() -> None:
    write("reference/cli.md", cli_page())
    write("reference/config.md", config_page())
    write("reference/api.md", api_page())
    for source, target in reference.COPIED_PAGES.items():
        text = (ROOT / source).read_text()
        write(target, reference.rewrite_links(text, source, target))
    for folder, target in reference.COPIED_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                with mkdocs_gen_files.open(f"{target}/{path.relative_to(ROOT / folder)}", "wb") as out:
                    out.write(path.read_bytes())


def write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(path, "w") as out:
        out.write(text)
    mkdocs_gen_files.set_edit_path(path, "scripts/gen_pages.py")


def cli_page() -> str:
    found = reference.commands()
    lines = [
        "# Command line reference",
        "",
        "Generated from `radargate.cli.build_parser()` when the site is built: what `radargate <command> --help`",
        "prints. Guides: [getting started](../getting-started.md), [runs and reports](../training.md).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for command in found[1:]:
        lines.append(f"| [`{command.name}`](#{anchor(command.name)}) | {cell(command.help)} |")
    for command in found:
        lines += ["", f"## `{command.name}` {{#{anchor(command.name)}}}", ""]
        if command.help:
            lines += [cell(command.help[0].upper() + command.help[1:]) + ".", ""]
        lines += ["```text", reference.help_text(command.parser).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def config_page() -> str:
    sections = reference.config_sections()
    described = {field.key: field.description for section in sections for field in section.fields}
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config classes when the site is built (`radargate.experiment.config`; the `adapter`",
        "section is the library's `MoLoRAConfig`). A YAML config sets any of these keys, and",
        "`--set key=value` overrides one on the command line; a key left out keeps its default, a misspelt key",
        "is an error naming it. Values are read as the field's type (`lr: 3e-4` is a number, `precision: no` the",
        "string `no`). Guide: [getting started](../getting-started.md#configs).",
        "",
        "Sections: " + ", ".join(f"[`{s.key or 'top level'}`](#{anchor(s.key or 'top level')})" for s in sections),
    ]
    for section in sections:
        title = section.key or "top level"
        lines += ["", f"## `{title}` {{#{anchor(title)}}}", ""]
        intro = section.summary or described.get(section.key.removesuffix("[]"), "")
        if intro:
            lines += [intro, ""]
        lines += [f"Defined by `{section.cls.__module__}.{section.cls.__name__}`.", ""]
        lines += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        sections_by_key = {s.key.removesuffix("[]"): s.key for s in sections}
        for field in section.fields:
            default = code(field.default)
            if field.key in sections_by_key:  # a section of its own: point at its table
                default = f"[its section](#{anchor(sections_by_key[field.key])})" + (f": {default}" if default else "")
            lines.append(f"| `{field.key}` | {code(field.type)} | {default} | {cell(field.allowed)} | "
                         f"{cell(markdown(field.description) or reference.MISSING)} |")
    return "\n".join(lines) + "\n"


def api_page() -> str:
    lines = [
        "# Python API reference",
        "",
        "Generated from the docstrings when the site is built ([mkdocstrings](https://mkdocstrings.github.io/)).",
        "The library is what `import radargate` needs (it imports nothing from the experiment harness); the",
        "guide is [using the library](../library.md).",
    ]
    lines += ["", "::: radargate", "    options:", "      members: false", "",  # its names are documented at home
              "`import radargate` gives " + ", ".join(f"[`{name}`][{home}]" for name, home in reference.api_exports())
              + "."]
    for module in reference.API_MODULES:
        lines += ["", f"::: {module}"]
    return "\n".join(lines) + "\n"


def anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def markdown(text: str) -> str:
    """Docstrings write code as ``x`` (reStructuredText); markdown reads that too, but single backticks read best."""
    return text.replace("``", "`")


def cell(text: str) -> str:
    """Text for a table cell: a ``|`` outside code would end the cell (inside code, Python-Markdown keeps it)."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    return "".join(part if part.startswith("`") else
                   part.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") for part in parts)


def code(text: str) -> str:
    return f"`{text}`" if text else ""


main()
