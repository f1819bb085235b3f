"""What the generated reference pages say, read from the code itself: the config fields and the commands.

Imported by ``gen_pages.py`` (the site build, through mkdocs-gen-files) and by ``tests/test_docs.py`` (every field
and every command described). Nothing here is written by hand per field or per command, so a new field or option
appears in the reference, and a field without a description fails the test, without anyone editing this file.

- A config field's description is the string literal right after it in its dataclass (PEP 257's attribute
  docstring, as PEP 258 and Sphinx read it), found with ``ast``.
- Its allowed values are read from the ``require_choice`` / ``require_int`` / ``require_number`` /
  ``require_bool`` calls of the class's methods, with the choices evaluated in the config module (``FORMATS``,
  ``method_names()``, ...), so they are the ones the config checks.
- A command's description is its argparse ``help``, from ``radargate.cli.build_parser()``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import os
import posixpath
import re
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # document the tree being built, whatever radargate is installed
    sys.path.insert(0, str(ROOT / "src"))

MISSING = "(no description)"

COPIED_PAGES = {  # made by the code under reports/ and benchmarks/; the site shows them as they are
    "reports/study.md": "reports/study.md",
    "reports/study_full.md": "reports/study_full.md",
    "benchmarks/README.md": "reports/benchmarks.md",
}
COPIED_FOLDERS = {"reports/study_plots": "reports/study_plots", "reports/study_full_plots": "reports/study_full_plots"}
GENERATED_PAGES = ("reference/cli.md", "reference/config.md", "reference/api.md", *COPIED_PAGES.values())

API_MODULES = (  # after ``radargate`` itself: the library (below the harness), the integrations, the harness's config
    "radargate.config", "radargate.model", "radargate.layer", "radargate.experts", "radargate.gates",
    "radargate.gates.base", "radargate.gates.radar", "radargate.gates.signed", "radargate.gates.softmax",
    "radargate.gates.topk", "radargate.gates.uniform", "radargate.losses", "radargate.stats", "radargate.injection",
    "radargate.peft_interop", "radargate.checkpoint", "radargate.integrations", "radargate.errors",
    "radargate.experiment.config",
)


@dataclass
class Field:
    """One config field as the reference shows it."""

    key: str  # dotted, from the top of a YAML config: ``train.lr``, ``data.sources[].format``
    type: str
    default: str
    allowed: str
    description: str  # empty when the field has none (the test fails then)


@dataclass
class Section:
    key: str  # ``train``; ``""`` for the top level; ``data.sources[]`` for a list of sections
    cls: type
    summary: str  # the class docstring's first paragraph
    fields: list[Field]


def config_sections() -> list[Section]:
    """Every section of a YAML config, top level first, each nested section after its parent."""
    from radargate.experiment.config import ExperimentConfig

    sections: list[Section] = []
    _walk(ExperimentConfig, "", sections)
    return sections


def _walk(cls: type, key: str, sections: list[Section]) -> None:
    docs = field_docstrings(cls)
    allowed = allowed_values(cls)
    hints = typing.get_type_hints(cls)
    section = Section(key, cls, _summary(cls), [])
    sections.append(section)
    nested = []
    for item in dataclasses.fields(cls):
        full = f"{key}.{item.name}" if key else item.name
        inner = _section_class(hints[item.name])
        if inner is not None:
            suffix = "[]" if typing.get_origin(hints[item.name]) is list else ""
            nested.append((inner, full + suffix))
        section.fields.append(Field(
            key=full,
            type=_type_text(item),
            default=_default_text(item, inner),
            allowed=allowed.get(item.name, ""),
            description=docs.get(item.name, ""),
        ))
    for inner, inner_key in nested:
        _walk(inner, inner_key, sections)


def _section_class(hint: object) -> type | None:
    """The dataclass a field holds (itself, in an ``X | None`` or in a ``list[X]``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _summary(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes when a class has no docstring
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _type_text(item: dataclasses.Field) -> str:
    return item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))


def _default_text(item: dataclasses.Field, inner: type | None) -> str:
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return "(required)"
    if inner is not None and dataclasses.is_dataclass(value):
        return ""  # a section: its own table gives its defaults
    if isinstance(value, float):
        return repr(round(value, 6))
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def field_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal right after its declaration in the class body, whitespace collapsed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


def allowed_values(cls: type) -> dict[str, str]:
    """Field name -> what its checks allow, from the ``require_*`` calls in the class's methods."""
    namespace = vars(sys.modules[cls.__module__])
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found: dict[str, list[str]] = {}
    for function in tree.body[0].body:  # type: ignore[attr-defined]
        if isinstance(function, ast.FunctionDef):
            _visit(function, {}, namespace, found)
    return {name: "; ".join(dict.fromkeys(texts)) for name, texts in found.items()}


def _visit(node: ast.AST, loops: dict[str, tuple[list[str], bool]], namespace: dict,
           found: dict[str, list[str]]) -> None:
    """Walk a method, knowing for each loop variable the fields it runs over (and whether over their entries)."""
    if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
        names = _constant_strings(node.iter)
        inner = {**loops, node.target.id: (names, False) if names is not None else (_self_attributes(node.iter), True)}
        for child in node.body:
            _visit(child, inner, namespace, found)
        for child in node.orelse:
            _visit(child, loops, namespace, found)
        return
    if isinstance(node, ast.Call):
        _record(node, loops, namespace, found)
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.NotIn)
            and _fields_of(node.left, loops)[0]):  # ``if self.bits not in QUANT_BITS: raise ...``
        fields, each = _fields_of(node.left, loops)
        text = _choices_text(node.comparators[0], namespace)
        for name in fields:
            found.setdefault(name, []).append(f"each entry: {text}" if each else text)
    for child in ast.iter_child_nodes(node):
        _visit(child, loops, namespace, found)


def _record(call: ast.Call, loops: dict, namespace: dict, found: dict[str, list[str]]) -> None:
    check = call.func.id if isinstance(call.func, ast.Name) else ""
    if not check.startswith("require_") or len(call.args) < 2:
        return
    fields, each = _fields_of(call.args[1], loops)
    if not fields:
        return
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    if check == "require_choice" and len(call.args) >= 3:
        text = _choices_text(call.args[2], namespace)
    elif check == "require_int":
        text = f"integer ≥ {ast.unparse(keywords['minimum'])}" if "minimum" in keywords else "integer"
    elif check == "require_number":
        low, high = (ast.unparse(keywords[k]) if k in keywords else None for k in ("low", "high"))
        open_low = "low_inclusive" in keywords and ast.unparse(keywords["low_inclusive"]) == "False"
        open_high = "high_inclusive" in keywords and ast.unparse(keywords["high_inclusive"]) == "False"
        text = f"number in {'(' if open_low else '['}{low}, {high or 'inf'}{')' if open_high or not high else ']'}"
    elif check == "require_bool":
        text = "`true`, `false`"
    else:
        return
    for name in fields:
        found.setdefault(name, []).append(f"each entry: {text}" if each else text)


def _choices_text(expression: ast.expr, namespace: dict) -> str:
    """The allowed values, evaluated in the config's module (``FORMATS``, ``method_names()``)."""
    try:
        choices = eval(compile(ast.Expression(expression), "<allowed>", "eval"), namespace)
        return ", ".join(f"`{choice}`" for choice in choices)
    except Exception:  # a choice list that needs the instance: show the expression
        return f"`{ast.unparse(expression)}`"


def _fields_of(value: ast.expr, loops: dict) -> tuple[list[str], bool]:
    """The fields a checked value comes from: ``self.x``, ``getattr(self, name)`` in a loop over names, or a loop
    variable over ``self.x`` (then each entry is checked)."""
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self":
        return [value.attr], False
    if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "getattr"
            and len(value.args) == 2 and isinstance(value.args[1], ast.Name) and value.args[1].id in loops):
        return loops[value.args[1].id]
    if isinstance(value, ast.Name) and value.id in loops:
        return loops[value.id]
    return [], False


def _constant_strings(node: ast.expr) -> list[str] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]  # type: ignore[attr-defined]
    return None


def _self_attributes(node: ast.expr) -> list[str]:
    return [n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"]


def api_exports() -> list[tuple[str, str]]:
    """``radargate.__all__``, each name with the full path of where it is defined (documented there)."""
    import radargate

    found = []
    for name in radargate.__all__:
        value = getattr(radargate, name)
        home = getattr(value, "__module__", None)
        if home and home != "radargate" and not name.startswith("_"):
            found.append((name, f"{home}.{name}"))
    return found


# ---- pages copied into the site --------------------------------------------------------------------------------

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def rewrite_links(text: str, source: str, target: str) -> str:
    """Relative links of a file at ``source`` (repository path) for its copy at ``target`` (site path): into
    ``docs/`` or onto another copied file they are re-pointed; onto other repository files (configs, code), which
    the site does not hold, they become the link's text and the path as code."""
    copies = {**COPIED_PAGES, **COPIED_FOLDERS}

    def replace(match: re.Match) -> str:
        bang, label, link = match.groups()
        if "://" in link or link.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, fragment = link.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        site_path = repo_path.removeprefix("docs/") if repo_path.startswith("docs/") else None
        for copied, copy in copies.items():
            if repo_path == copied or repo_path.startswith(copied + "/"):
                site_path = copy + repo_path.removeprefix(copied)
        if site_path is None:
            return f"{label} (`{repo_path}`)" if label.strip("`") != repo_path else f"`{repo_path}`"
        new = posixpath.relpath(site_path, posixpath.dirname(target) or ".") + (f"#{fragment}" if fragment else "")
        return f"{bang}[{label}]({new})"

    return LINK.sub(replace, text)


# ---- the command line ------------------------------------------------------------------------------------------


@dataclass
class Command:
    name: str  # ``radargate bundle pack``
    help: str  # what the parent parser lists for it
    parser: argparse.ArgumentParser


def commands() -> list[Command]:
    """``radargate`` itself, then every verb, each sub-verb after its verb."""
    from radargate.cli import build_parser

    found: list[Command] = []

    def walk(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
        found.append(Command(name, help_text, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for verb, sub in action.choices.items():
                    walk(sub, f"{name} {verb}", helps.get(verb, ""))

    walk(build_parser(), "radargate", "")
    return found


def undescribed_options(parser: argparse.ArgumentParser) -> list[str]:
    """The options and arguments of one parser that have no help text."""
    return [", ".join(action.option_strings) or action.dest for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
            and not (action.help or "").strip()]


def help_text(parser: argparse.ArgumentParser, width: int = 100) -> str:
    """``--help`` as a terminal of ``width`` columns prints it."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        return parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
