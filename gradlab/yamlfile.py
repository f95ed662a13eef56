"""A config file as written: YAML with the line of every key, ``--set`` overrides, and where a problem is.

Validation reports each problem as ``file:line: key.path: message``, so reading the file
must keep what PyYAML throws away: the line each key was written on, and keys given twice
(PyYAML silently keeps the later one). The loader reads YAML 1.2 floats (``1e-3`` is a
number, not a string). The keys themselves, their defaults and checks are ``config``'s;
only ``grid`` and ``tune`` are special here, as their keys are whole dotted paths.

The input is bounded before anything walks it (issue 13: an alias bomb grew past 1.8 GB, 500
levels of nesting raised RecursionError, 50 MB took 200 s): at most MAX_BYTES of text, MAX_DEPTH
levels of nesting, MAX_VALUES values and MAX_TEXT characters, counted with the aliases expanded, as
what reads the data (the line walk below, ``repr`` in a message, ``json.dumps`` of a run) sees them so.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import yaml

MAX_BYTES = 64 * 1024    # a config file: ~18x the largest shipped one; PyYAML reads 64 KB in ~0.6 s of CPU
MAX_DEPTH = 32           # levels of nesting; a config needs ~6 (grid: {model: [{clip: {kind: ...}}]})
MAX_VALUES = 100_000     # YAML nodes (keys, values, items) with the aliases expanded
MAX_TEXT = 1_000_000     # characters of the scalars with the aliases expanded: what a message's repr may print


class ConfigError(Exception):
    """All problems found in a config; one ``location: message`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------------------
# Reading YAML with line numbers.

class InputTooLarge(yaml.YAMLError):
    """The YAML passes MAX_DEPTH, MAX_VALUES or MAX_TEXT; ``mark`` is where (PyYAML's, 0-based line)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats (PyYAML's YAML 1.1 resolver wants a dot, so 1e-3 was a string),
    and refusing input nested deeper than MAX_DEPTH or larger than MAX_VALUES or MAX_TEXT, aliases expanded.

    PyYAML's composer returns an alias as the very node its anchor names, so 9 anchors of 9 aliases
    each are a graph of ~90 nodes that every reader of the data expands to 9^9. Each composed node's
    expanded size, text and height are kept, so an alias costs one look-up and the check never expands it.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0                       # nodes being composed, root to here (PyYAML recurses)
        self._expanded: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, text, height), expanded

    def compose_node(self, parent, index):
        mark, alias = self.peek_event().start_mark, self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:  # before PyYAML's recursion reaches Python's limit
                raise InputTooLarge(f"nested deeper than {MAX_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._expanded:  # its anchor's node is still being composed: it holds itself
                raise InputTooLarge("an alias refers to the collection that holds it (a recursive structure)", mark)
            return node
        if isinstance(node, yaml.ScalarNode):
            children, text = [], len(node.value)
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            text = sum(self._expanded[id(c)][1] for c in children)
        values = 1 + sum(self._expanded[id(c)][0] for c in children)
        height = 1 + max((self._expanded[id(c)][2] for c in children), default=0)
        if values > MAX_VALUES:
            raise InputTooLarge(f"more than {MAX_VALUES:,} values with the aliases expanded", node.start_mark)
        if text > MAX_TEXT:
            raise InputTooLarge(f"more than {MAX_TEXT:,} characters with the aliases expanded", node.start_mark)
        if height > MAX_DEPTH:
            raise InputTooLarge(f"nested deeper than {MAX_DEPTH} levels with the aliases expanded", node.start_mark)
        self._expanded[id(node)] = (values, text, height)
        return node


_FLOAT = "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != _FLOAT]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _read_yaml(text: str) -> tuple[object, dict[str, int], list[tuple[str, int, int]]]:
    """(data, dotted key path -> 1-based line, keys given twice as (path, first line, second line)).

    Grid keys are kept whole; a key given twice keeps its later value, as PyYAML does.
    """
    lines: dict[str, int] = {}
    twice: list[tuple[str, int, int]] = []

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for k, v in node.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                line = k.start_mark.line + 1
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in seen:
                        twice.append((key, seen[k.tag, k.value], line))
                    seen.setdefault((k.tag, k.value), line)
                lines[key] = line
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{path}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{path}[{i}]")

    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    if root is not None:
        walk(root, "")
    return data, lines, twice


def parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int], list[str]]:
    """A config file's text -> (data, key path -> line, problems found while reading: keys given twice)."""
    try:
        data, lines, twice = _read_yaml(text)
    except InputTooLarge as e:
        raise ConfigError([f"{source}:{e.mark.line + 1}: {e.problem}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{where}: malformed YAML: {problem}"]) from None
    if data is None:
        return {}, lines, []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the config must be a mapping of keys, got {type(data).__name__}"])
    return data, lines, [f"{source}:{second}: {key}: given twice, "
                         + (f"at lines {first} and {second}" if first != second else "on this line") + "; keep one"
                         for key, first, second in twice]


def parse_override(item: str) -> tuple[str, object]:
    """``train.lr=0.01`` -> ("train.lr", 0.01); the value is read as YAML."""
    path, eq, raw = item.partition("=")
    path = path.strip()
    if not eq or not path:
        raise ConfigError([f"--set {item}: expected dotted.path=value"])
    try:
        value, _, twice = _read_yaml(raw) if raw.strip() else (None, {}, [])
    except InputTooLarge as e:
        raise ConfigError([f"--set {path}: {e.problem}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"--set {item}: the value is not valid YAML"]) from None
    if twice:
        raise ConfigError([f"--set {path}.{key}: given twice; keep one" for key, _, _ in twice])
    return path, value


def _kind(mode: int) -> str:
    """What a non-regular file is, for the message."""
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_text(path: Path, source: str) -> str:
    """The file as UTF-8 text; an unreadable, undecodable or too large (MAX_BYTES) file is a ConfigError,
    and so is a directory, a device (/dev/zero) or a socket, which is no config (issue 22).

    A pipe is read (``gradlab run <(sed … cfg.yaml)``, ``cat cfg.yaml | gradlab validate /dev/stdin``):
    it is opened non-blocking, so a FIFO with no writer opens at once instead of waiting for one, and
    reads at once as empty, which is refused (an empty file is a config of defaults; an empty pipe is
    one nobody wrote). The kind is decided on the open descriptor (``fstat``), so nothing swapped in
    after a check is read; ``stat`` first keeps a device from being opened at all."""
    try:
        _refuse_kind(os.stat(path).st_mode, source)  # never blocks, opens nothing
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # not inherited (PEP 446)
        try:
            mode = os.fstat(fd).st_mode
            _refuse_kind(mode, source)
            os.set_blocking(fd, True)  # a pipe's writer may not have written yet: wait for it, or its EOF
            raw = _read_bounded(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError([f"{source}: cannot read the config: {e.strerror}"]) from None
    if stat.S_ISFIFO(mode) and not raw:
        raise ConfigError([f"{source}: cannot read the config: a pipe with nothing written to it"])
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{source}: the config is larger than {MAX_BYTES // 1024} KB; "
                           "a config lists values, not data"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:  # a binary or Latin-1 file: one located line, not a traceback
        raise ConfigError([f"{source}: cannot read the config: not UTF-8 text (byte {e.start})"]) from None


def _refuse_kind(mode: int, source: str) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise ConfigError([f"{source}: cannot read the config: {_kind(mode)}, not a file"])


def _read_bounded(fd: int) -> bytes:
    """Up to MAX_BYTES + 1 bytes, until EOF: never more (the file may be huge, or a pipe endless);
    a pipe gives its data in pieces, so one read is not the whole."""
    chunks, size = [], 0
    while size <= MAX_BYTES:
        chunk = os.read(fd, MAX_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def header_comment(text: str) -> str:
    """The comment lines at the top of a YAML file, without their ``#``; a blank line or a key ends it."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------
# Dotted key paths: train.lr is data["train"]["lr"]; grid keys are whole paths (grid.model.cell).

# sections whose keys are themselves dotted paths (grid.model.cell, tune.train.lr)
WHOLE_PATH_SECTIONS = ("grid", "tune")


def _whole_path_section(path: str) -> str | None:
    return next((s for s in WHOLE_PATH_SECTIONS if path.startswith(s + ".")), None)


def set_path(data: dict, path: str, value) -> None:
    if section := _whole_path_section(path):
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            data[section] = {}
        data[section][path[len(section) + 1:]] = value
        return
    parts = path.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def not_a_mapping(data: dict, path: str) -> str | None:
    """The section on ``path``'s way that the data holds as something else than a mapping, or None.

    ``set_path`` would replace it by a mapping, so a ``--set train.lr=0.1`` would hide a file's
    ``train: [1, 2]`` from validation: the caller refuses such a --set instead.
    """
    section = _whole_path_section(path)
    parts = [section, path[len(section) + 1:]] if section else path.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        if p not in node:
            return None
        node = node[p]
        if not isinstance(node, dict):
            return ".".join(parts[:i + 1])
    return None


def get_path(data: dict, path: str):
    node = data
    for p in path.split("."):
        node = node[p]
    return node


# ---------------------------------------------------------------------------
# Where a problem is: the line of the file that gives the key, or the --set that does.

def locator(source: str, lines: dict[str, int], set_paths) -> Callable[[str], str]:
    """``where(path)``: ``file:line: path`` (``file: path`` for a key not in the file), or ``--set path``."""
    def where(path):
        if _from_set(path, set_paths):
            return f"--set {path}"
        line = lines.get(path)
        return f"{source}:{line}: {path}" if line else f"{source}: {path}"
    return where


def _from_set(path: str, set_paths) -> bool:
    """Whether ``path``'s value comes from a --set: the same key, a section around it or a key within it."""
    bare = path.split("[")[0]
    for s in set_paths:
        if bare == s or (s == "grid" and bare.startswith("grid.")):
            return True
        if not bare.startswith("grid") and (bare.startswith(s + ".") or s.startswith(bare + ".")):
            return True  # grid keys are whole dotted paths: no prefixes there
    return False


def did_you_mean(word, choices) -> str:
    """`` (did you mean 'lstm'?)`` for the closest of ``choices`` to an unknown name, or ``""``: the hint
    every unknown key, column, task or clip rule gets (lm-evaluation-harness style)."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def in_file_order(problems: list[str], source: str) -> list[str]:
    """Problems located at a line of the file first, top to bottom; then the rest, as found."""
    def line(p):
        head = p[len(source) + 1:].split(":", 1)[0] if p.startswith(source + ":") else ""
        return (0, int(head)) if head.isdigit() else (1, 0)
    return sorted(problems, key=line)
