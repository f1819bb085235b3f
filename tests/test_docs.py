"""The README and the documentation site still match the code: every config field and every command is described
(the reference pages are generated from those descriptions), every relative link points at a file that exists,
and the code blocks run as written (commands parse with the real parser, configs validate, Python imports what
exists, and the README's library example trains, saves, loads and generates on a tiny model)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from radargate.cli import build_parser
from radargate.experiment.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_LIMIT = 12_000


def _load_reference():
    """``docs/scripts/reference.py``, the module the site's generated pages are made from."""
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "scripts" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- descriptions ---------------------------------------------------------------------------------------------


def test_every_config_field_has_a_description():
    """The configuration reference shows each field's docstring; a field without one would be a blank row."""
    missing = [field.key for section in reference.config_sections() for field in section.fields
               if not field.description]
    assert missing == [], f"config fields without a docstring (a string literal right after the field): {missing}"


def test_the_config_reference_reads_allowed_values_from_the_checks():
    fields = {field.key: field for section in reference.config_sections() for field in section.fields}
    assert fields["data.sources[].format"].allowed == "`completion`, `chat`, `multiple_choice`"
    assert "`radar`" in fields["method"].allowed and "`lora`" in fields["method"].allowed
    assert fields["train.steps"].allowed == "integer ≥ 1"
    assert fields["model.quantization.bits"].allowed == "`4`, `8`"
    assert fields["study.experts"].allowed == "each entry: integer ≥ 1"
    assert fields["adapter.gate"].default == "softmax" and fields["train.lr"].type == "float"


def test_every_command_has_a_description():
    missing = [command.name for command in reference.commands()[1:] if not command.help.strip()]
    assert missing == []


@pytest.mark.parametrize("command", reference.commands(), ids=lambda command: command.name)
def test_every_option_has_a_description(command):
    assert reference.undescribed_options(command.parser) == []


def test_help_opens_with_what_the_tool_does():
    opening = build_parser().description.strip().split("\n")[0]
    assert "LoRA experts" in opening and "thin" not in opening


# ---- links ----------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*(?:\{#([\w-]+)\})?\s*$", re.M)


def links(text: str) -> list[str]:
    """The targets of the markdown links outside code."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """Python-Markdown's toc slug (the site's anchors; GitHub's agree for plain headings)."""
    text = unicodedata.normalize("NFKD", CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading))
    text = re.sub(r"[^\w\s-]", "", text.encode("ascii", "ignore").decode()).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {explicit or slug(title) for title, explicit in HEADING.findall(text)}


def generated_pages() -> set[Path]:
    """Pages the site build writes under docs/ (reference pages, copied reports): links into the site may point
    at them although no file holds them."""
    return {DOCS / page for page in reference.GENERATED_PAGES}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_at_files_that_exist(page):
    broken = []
    for target in links(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path_part, _, fragment = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        in_site = page.is_relative_to(DOCS) and path in generated_pages()
        if not (path.exists() or in_site):
            broken.append(target)
        elif fragment and path.suffix == ".md" and path.exists() and fragment not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{page_id(page)} links to what does not exist: {broken}"


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters, more than {README_LIMIT}"
    assert "docs/getting-started.md" in text and "docs/radargate.md" in text


def test_the_site_lists_every_page_in_its_nav():
    """mkdocs --strict fails on a page left out of the nav (validation.omitted_files); this says which, sooner."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from entries(value) if isinstance(value, list) else [value]

    listed = set(entries(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "scripts" not in p.parts}
    assert pages - listed == set() and listed - pages - set(reference.GENERATED_PAGES) == set()


# ---- code blocks ----------------------------------------------------------------------------------------------

BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
CONFIG_SECTIONS = {field.key for field in reference.config_sections()[0].fields}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for index, (lang, body) in enumerate(BLOCK.findall(page.read_text())):
            if lang in ({"bash", "sh", "shell", "console"} if language == "bash" else {language}):
                found.append((f"{page_id(page)}[{index}]", body))
    return found


def command_lines(body: str) -> list[list[str]]:
    """Each ``radargate`` invocation of a shell block (``radargate ...``, ``.venv/bin/radargate ...``,
    ``... -m radargate.cli ...``) and each ``make`` call, as argument lists; ``[--option value]`` counts as given."""
    found = []
    for line in body.replace("\\\n", " ").split("\n"):
        line = re.sub(r"\[(--?[^\[\]]*)\]", r"\1", line)
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        segment: list[str] = []
        redirected = False
        for token in [*tokens, "|"]:
            if token in {"|", "&&", ";", "||", "&"}:
                found.append(segment)
                segment = []
            elif redirected or re.match(r"^\d*(>>?|<)", token):  # 2>&1, > log, < input
                redirected = token in {">", ">>", "<", "2>", "1>"} and not redirected
            else:
                segment.append(token)
    invocations = []
    for segment in found:
        while segment and re.match(r"^[A-Z_][A-Z0-9_]*=", segment[0]):
            segment = segment[1:]  # environment variables
        if segment and segment[0] in {"timeout", "nohup", "time"}:
            segment = segment[2:] if segment[0] == "timeout" else segment[1:]
        if not segment:
            continue
        if segment[0] == "radargate" or segment[0].endswith("/radargate"):
            invocations.append(["radargate", *segment[1:]])
        elif "radargate.cli" in segment and segment[segment.index("radargate.cli") - 1] == "-m":
            invocations.append(["radargate", *segment[segment.index("radargate.cli") + 1:]])
        elif segment[0] == "make":
            invocations.append(segment)
    return invocations


COMMANDS = reference.commands()
SHELL = [(f"{where}: {' '.join(args)}", args) for where, body in blocks("bash") for args in command_lines(body)]


def test_the_docs_show_commands():
    assert sum(args[0] == "radargate" for _, args in SHELL) >= 30


@pytest.mark.parametrize(("where", "args"), SHELL, ids=[where for where, _ in SHELL])
def test_command_in_the_docs_parses(where, args, capsys):
    if args[0] == "make":
        assert set(args[1:]) <= MAKE_TARGETS, f"{where}: no such make target"
        return
    if "--help" in args or "-h" in args or "--version" in args:
        return
    try:
        parsed = build_parser().parse_args(args[1:])
    except SystemExit:
        pytest.fail(f"{where}: radargate refuses it: {capsys.readouterr().err.strip().splitlines()[-1]}")
    parser = max((c.parser for c in COMMANDS if " ".join(args).startswith(c.name)), key=lambda p: len(p.prog))
    options = {option for action in parser._actions for option in action.option_strings}
    abbreviated = [token for token in args if token.startswith("--") and token.split("=")[0] not in options]
    assert abbreviated == [], f"{where}: not options of {parser.prog} as written (argparse took a prefix)"
    config = getattr(parsed, "config", None)
    if config and "..." not in config and not Path(config).is_absolute():
        assert (ROOT / config).is_file(), f"{where}: no config file {config}"
        if getattr(parsed, "run", None) is None:  # the config and every --set as radargate reads them
            ExperimentConfig.load(ROOT / config, parsed.overrides)


CONFIGS = [(where, values) for where, body in blocks("yaml")
           if isinstance(values := yaml.safe_load(body), dict) and set(values) <= CONFIG_SECTIONS]


def test_the_docs_show_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize(("where", "values"), CONFIGS, ids=[where for where, _ in CONFIGS])
def test_config_in_the_docs_validates(where, values):
    ExperimentConfig.from_dict(values)


PYTHON = blocks("python")


@pytest.mark.parametrize(("where", "body"), PYTHON, ids=[where for where, _ in PYTHON])
def test_python_in_the_docs_compiles_and_imports_what_exists(where, body):
    import ast

    tree = ast.parse(body, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "radargate":
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert missing == [], f"{where}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "radargate":
                    importlib.import_module(alias.name)


def test_readme_library_example_runs_as_written(tiny_model_dir, tmp_path, monkeypatch):
    """The README's library block, with the tiny model's folder for the Hub name: it builds the mixture, takes an
    optimizer step, saves, loads and generates."""
    (body,) = [body for where, body in PYTHON if where.startswith("README.md") and "get_molora_model" in body]
    source, count = re.subn(r'^path = "[^"]*"', f"path = {str(tiny_model_dir)!r}", body, flags=re.M)
    assert count == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    assert (tmp_path / "ckpt").is_dir() and isinstance(namespace["model"], __import__("radargate").MoLoRAModel)
