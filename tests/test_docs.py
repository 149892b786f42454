"""The documents name only what exists: every `make` target, `manage.py` command and option, `python -m` module,
setting or environment variable, file, test, link anchor, and dotted name of the project (module, function, task,
queue, exchange, event type or routing key) that README.md and docs/ mention.

Names are taken from code (inline code spans and fenced blocks) and from links; prose is not read.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands, load_command_class

from eventbus.asyncapi import published_contracts
from eventbus.subscriptions import subscribers
from eventbus.topology import DEAD_LETTER_EXCHANGE, UNROUTED_EXCHANGE, dead_letter_queue, event_exchange

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "observability" / "README.md"]
# Files other than Python that read variables or run commands.
CONFIG_FILES = ["Makefile", "docker-compose.yml", "Procfile", "Dockerfile", ".ci/run"]
SKIPPED_DIRS = {".venv", ".run", ".git", "__pycache__", "node_modules"}
FILE_EXTENSIONS = (".py", ".md", ".yml", ".yaml", ".json", ".png", ".txt", ".toml", ".html", ".example")
BARE_FILES = {"Makefile", "Procfile", "Dockerfile"}
# Upper-case names with an underscore that are not settings: the broker's error replies.
NOT_SETTINGS = {"ACCESS_REFUSED", "PRECONDITION_FAILED"}
# Variables read by a library itself, never by the project's code: the OpenTelemetry SDK's sampler.
READ_BY_LIBRARIES = {"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
MAKE = re.compile(r"(?<![\w/.-])make\s+([a-z][\w.-]*)")
MANAGE = re.compile(r"manage\.py\s+([a-z_]+)([^\n#`]*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
MODULE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
SPAN_SETTING = re.compile(rf"({NAME})(?:=.*)?", re.DOTALL)
ASSIGNED = re.compile(rf"(?:^|[\s;(])({NAME})=", re.MULTILINE)
EXPANDED = re.compile(rf"\$\{{?({NAME})")
LITERAL = re.compile(rf"""["']({NAME})["']""")
PREFIX_READ = re.compile(r"""env_prefixed\(\s*["']([A-Z][A-Z0-9_]*)["']""")
PATH = re.compile(r"[\w.@-]+(?:/[\w.@-]*)*")
TEST_REF = re.compile(r"([\w./-]+\.py)::(\w+)")
PACKAGES = ("eventbus", "orders", "inventory", "payments", "orderproj", "devstack", "bench", "chaos", "tests")
DOTTED = re.compile(rf"(?:{'|'.join(PACKAGES)})(?:\.[\w-]+)+")


class Doc:
    """A document split into what the checks read: code (spans and fenced blocks) and link targets."""

    def __init__(self, path: Path, text: str | None = None) -> None:
        self.path = path
        self.text = path.read_text() if text is None else text
        self.blocks = FENCE.findall(self.text)
        prose = FENCE.sub("", self.text)
        self.spans = [match[2].strip() for match in SPAN.finditer(prose)]
        self.links = LINK.findall(SPAN.sub("", prose))

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    def code(self) -> Iterator[str]:
        yield from self.spans
        yield from self.blocks


# --- what exists


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:", (ROOT / "Makefile").read_text(), re.MULTILINE))


def project_files(pattern: str = "*.py") -> Iterator[Path]:
    for path in ROOT.rglob(pattern):
        if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts) and path != Path(__file__):
            yield path


@cache
def file_names() -> frozenset[str]:
    """The name of every file of the project, in any folder: a bare name such as `services.py` must be one."""
    return frozenset(path.name for path in project_files("*"))


@cache
def names_in_code() -> tuple[frozenset[str], tuple[str, ...]]:
    """Upper-case names the code reads (quoted in a project module, or in a config file), and the prefixes of
    variables read by prefix (`env_prefixed("BROKER_PASSWORD_")`)."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for path in project_files():
        source = path.read_text()
        names |= set(LITERAL.findall(source))
        prefixes |= set(PREFIX_READ.findall(source))
    for name in CONFIG_FILES:
        names |= set(re.findall(NAME, (ROOT / name).read_text()))
    return frozenset(names), tuple(prefixes)


def is_known_setting(name: str) -> bool:
    names, prefixes = names_in_code()
    return name in names or name in READ_BY_LIBRARIES or hasattr(settings, name) or name.startswith(prefixes)


@cache
def command_options(name: str) -> frozenset[str]:
    """Every option string of a management command, its subcommands' too."""
    command = load_command_class(get_commands()[name], name)
    parsers, options = [command.create_parser("manage.py", name)], set()
    while parsers:
        for action in parsers.pop()._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return frozenset(options)


@cache
def broker_and_task_names() -> frozenset[str]:
    """Every exchange, queue and task name of the pipeline, and every event type, family and routing key."""
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for subscriber in subscribers():
        queues |= {subscriber.queue, subscriber.task_queue}
        tasks |= {subscriber.batch_task, *(handler.name for handler in subscriber.handlers)}
    contracts = published_contracts()
    exchanges = {event_exchange(contract.producer).name for contract in contracts}
    exchanges |= {DEAD_LETTER_EXCHANGE.name, UNROUTED_EXCHANGE.name}
    events = {name for contract in contracts for name in (contract.type, contract.family, contract.routing_key)}
    return frozenset(queues | {dead_letter_queue(queue).name for queue in queues} | tasks | exchanges | events)


def python_object_exists(dotted: str) -> bool:
    """Whether `dotted` is a module, or an attribute of one (imported to look: never a settings module)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ImportError:
            continue
        if end == len(parts):
            return True
        value = importlib.import_module(module)
        for attribute in parts[end:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(document: Path | Doc) -> frozenset[str]:
    text = document.read_text() if isinstance(document, Path) else document.text
    return frozenset(slug(heading) for heading in HEADING.findall(FENCE.sub("", text)))


def defines(path: Path, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b", path.read_text(), re.MULTILINE) is not None


# --- the checks: each yields what a document names that does not exist


def missing_make_targets(doc: Doc) -> Iterator[str]:
    for code in doc.code():
        for target in MAKE.findall(code):
            if target not in make_targets():
                yield f"make {target}"


def missing_commands(doc: Doc) -> Iterator[str]:
    commands = get_commands()
    for code in doc.code():
        for name, rest in MANAGE.findall(code):
            if name not in commands:
                yield f"manage.py {name}"
                continue
            for option in OPTION.findall(rest):
                if option not in command_options(name):
                    yield f"manage.py {name} {option}"


def missing_modules(doc: Doc) -> Iterator[str]:
    for code in doc.code():
        for module in MODULE.findall(code):
            if importlib.util.find_spec(module) is None:
                yield f"python -m {module}"


def missing_settings(doc: Doc) -> Iterator[str]:
    named = {match[1] for span in doc.spans if (match := SPAN_SETTING.fullmatch(span))}
    for block in doc.blocks:
        named |= set(ASSIGNED.findall(block))
    for code in doc.code():
        named |= set(EXPANDED.findall(code))
    yield from sorted(name for name in named - NOT_SETTINGS if not is_known_setting(name))


def missing_files(doc: Doc) -> Iterator[str]:
    """Repository paths in code spans (from the root, or the document's folder) and relative link targets."""
    top_level = {path.name for path in ROOT.iterdir()}
    for span in doc.spans:
        reference = TEST_REF.fullmatch(span)
        path = reference[1] if reference else span
        if not PATH.fullmatch(path) or path.startswith((".run/", "./")):
            continue
        in_repo = path.split("/")[0] in top_level and "/" in path
        if not (in_repo or path.endswith(FILE_EXTENSIONS) or path in BARE_FILES):
            continue
        if "/" not in path:
            if path not in file_names():
                yield path
            continue
        found = next((base / path for base in (ROOT, doc.path.parent) if (base / path).exists()), None)
        if found is None:
            yield path
        elif reference and not defines(found, reference[2]):
            yield span
    yield from (link for link in doc.links if not re.match(r"[a-z]+:", link) and link_broken(doc, link))


def link_broken(doc: Doc, link: str) -> bool:
    """A relative link to a file that does not exist, or to a heading its document does not have."""
    target, _, anchor = link.partition("#")
    path = (doc.path.parent / target).resolve()
    if target and not path.exists():
        return True
    if not anchor or (target and path.suffix != ".md"):
        return False
    return anchor not in anchors(path if target else doc)


def missing_dotted_names(doc: Doc) -> Iterator[str]:
    """Dotted names of the project's packages: a module, class or function, a task, queue, exchange or event."""
    for span in doc.spans:
        if DOTTED.fullmatch(span) and span not in broker_and_task_names() and not python_object_exists(span):
            yield span


CHECKS: dict[str, Callable[[Doc], Iterator[str]]] = {
    "make targets": missing_make_targets,
    "management commands and options": missing_commands,
    "python -m modules": missing_modules,
    "settings and environment variables": missing_settings,
    "files, tests and link anchors": missing_files,
    "modules, functions, tasks, queues and exchanges": missing_dotted_names,
}


@pytest.mark.parametrize("kind", CHECKS)
def test_the_documents_name_only_what_exists(kind):
    check = CHECKS[kind]
    problems = [f"{doc.name}: {name}" for doc in map(Doc, DOCS) for name in check(doc)]
    assert not problems, f"the documents name {kind} that do not exist:\n" + "\n".join(problems)


def test_the_catalogue_lists_every_published_event_with_its_routing_key():
    rows = [line for line in (ROOT / "docs" / "events.md").read_text().splitlines() if line.startswith("|")]
    for contract in published_contracts():
        wanted = (f"`{contract.type}`", f"`{contract.routing_key}`")
        assert any(all(part in row for part in wanted) for row in rows), f"docs/events.md lacks {wanted}"


def test_each_check_catches_a_name_that_does_not_exist():
    # Given a document that names one thing of each kind that exists and one that does not
    doc = Doc(
        ROOT / "docs" / "example.md",
        "# Example\n\nRun `make run`, `make bogus`, `manage.py dlq replay --all`, `manage.py dlq --bogus`,\n"
        "`manage.py bogus`, `python -m devstack`, `python -m bogus_module`, `EVENTBUS_MAX_HOPS`,\n"
        "`EVENTBUS_BOGUS_LIMIT`, `BROKER_PASSWORD_SHIPPING`, `eventbus/topology.py`, `eventbus/bogus.py`,\n"
        "`tests/test_docs.py::test_each_check_catches_a_name_that_does_not_exist`, `tests/test_docs.py::test_bogus`,\n"
        "`orders.OrderPlaced.v1`, `orders.OrderPlaced.v9`, [this](#example), [that](#bogus), [one](guarantees.md),\n"
        "`orders.services.order_place`, `orders.services.order_bogus`, `inventory.reserve_stock`, `orders.events-in`,\n"
        "`orderproj.settings.production`, `eventbus.bogus`,\n"
        "[two](bogus.md).\n\n```\nBOGUS_PORT=1 make run\n```\n",
    )

    # When every check reads it
    found = {name for check in CHECKS.values() for name in check(doc)}

    # Then exactly the names that do not exist are reported
    assert found == {
        "make bogus",
        "manage.py dlq --bogus",
        "manage.py bogus",
        "python -m bogus_module",
        "EVENTBUS_BOGUS_LIMIT",
        "BOGUS_PORT",
        "eventbus/bogus.py",
        "tests/test_docs.py::test_bogus",
        "orders.OrderPlaced.v9",
        "orders.services.order_bogus",
        "eventbus.bogus",
        "#bogus",
        "bogus.md",
    }
