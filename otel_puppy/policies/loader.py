"""Load policy files: YAML -> `PolicySet`, every error at `file:line:column` with its field path.

Per file: read (1 MiB cap, UTF-8) -> compose with ruamel.yaml's round-trip parser into nodes (only
nodes: no tag ever constructs a Python object) -> convert the nodes to plain data, remembering where
each key and value was written and refusing alias bombs -> validate with `PolicyFile` -> map each
pydantic error back to its position. Then files merge in name order, rejecting duplicate entries.
Every error of every file is collected before `PolicyErrors` is raised, so users fix all in one pass.

Numbers are converted from the scalar's text (`0.6` is `Decimal("0.6")`, never a float on the way).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml import composer as _ruamel_composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from otel_puppy.exceptions import PolicyError, PolicyErrors
from otel_puppy.policies.models import PolicyFile, PolicySet, SectionEntry

__all__ = ("MAX_ALIAS_NODES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_MAGNITUDE", "load_policies", "parse_policy_text")

MAX_FILE_BYTES: Final = 1024 * 1024
"""Largest policy file read; larger ones are an error, not truncated."""
MAX_DEPTH: Final = 32
"""Deepest nesting accepted, counting every node on the way down (the grammar needs about 6)."""
MAX_ALIAS_NODES: Final = 10_000
"""How many nodes aliases may add to a document in total; a "billion laughs" adds ~10**9."""
MAX_MAGNITUDE: Final = 30
"""Numbers are 0 or between 1e-30 and 1e30 in size: no policy quantity needs more, and `1e-999999999`
would otherwise be a billion digits wherever the number is printed (a summary, an error)."""

_SUFFIXES: Final = (".yaml", ".yml")
_YAML_TAG: Final = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_YAML_TAG + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _MAP, _SEQ, _MERGE = (_YAML_TAG + t for t in ("timestamp", "map", "seq", "merge"))
_TRUE: Final = frozenset({"true", "yes", "on", "y"})  # the last three only under `%YAML 1.1`
_MAX_SHOWN: Final = 60
_TOO_DEEP: Final = f"nested too deeply (the limit is {MAX_DEPTH} levels)"
# ruamel.yaml >= 0.19 enforces `max_depth` itself; older versions run out of Python recursion.
_DEPTH_ERRORS: Final[tuple[type[BaseException], ...]] = tuple(
    filter(None, [getattr(_ruamel_composer, "MaxDepthExceededError", None)])
)

Loc = tuple[str | int, ...]
"""Where a value sits in a document, as pydantic reports it: `("prices", 1, "input_mtok")`."""


@dataclass(frozen=True, slots=True)
class _Mark:
    """A 1-based position in a file."""

    line: int
    column: int


class _FileFailed(Exception):
    """Stops work on one file whose content cannot be used at all (syntax error, alias bomb)."""

    def __init__(self, error: PolicyError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class _Document:
    """One file's content as plain data, with where each key and value of it was written."""

    file: Path
    data: Any = None
    values: dict[Loc, _Mark] = field(default_factory=dict)
    keys: dict[Loc, _Mark] = field(default_factory=dict)
    scalars: dict[Loc, ScalarNode] = field(default_factory=dict)
    reported: set[Loc] = field(default_factory=set)
    """Locations already reported while converting: validation errors at or under them are noise."""
    incomplete: set[Loc] = field(default_factory=set)
    """Mappings that lost a key while converting: "missing key" errors for them are noise."""
    errors: list[PolicyError] = field(default_factory=list)

    def mark(self, loc: Loc, *, key: bool = False) -> _Mark | None:
        """Where `loc` (its key if `key`) was written, or its closest enclosing value."""
        if key and loc in self.keys:
            return self.keys[loc]
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.values:
                return self.values[loc[:end]]
        return None

    def error(self, loc: Loc, message: str, *, key: bool = False, at: _Mark | None = None) -> PolicyError:
        """A `PolicyError` at `loc` (or explicitly `at`), with `loc` as its field path."""
        where = at or self.mark(loc, key=key)
        line, column = (where.line, where.column) if where else (None, None)
        return PolicyError(self.file, line, column, message, _path(loc))


@dataclass(frozen=True, slots=True)
class _Parsed:
    """The outcome for one file: a validated `PolicyFile`, or the errors that prevented it."""

    file: Path
    policy: PolicyFile | None
    errors: list[PolicyError]
    document: _Document | None = None


def load_policies(path: Path | str) -> PolicySet:
    """Load a policy directory (every `*.yaml`/`*.yml` file directly in it, by name) or one file.

    Raises `PolicyErrors` listing every problem in every file. Files starting with `.` (editor
    backups, lock files) are ignored; links are followed only if they stay inside the directory.

    >>> load_policies(Path("policies/")).summary()  # doctest: +SKIP
    ['price self-hosted/llama-3.1-70b: $0.6/MTok in, $0.6/MTok out']
    """
    return _merge([_load_file(file) for file in _policy_files(Path(path))])


def parse_policy_text(text: str, file: Path) -> PolicySet:
    """Parse one policy file's content; `file` is only used to name it in errors and `sources`."""
    return _merge([_parse(text, Path(file))])


def _policy_files(path: Path) -> Iterator[Path | PolicyError]:
    if path.is_dir():
        yield from _directory_files(path)
    elif path.is_file():
        yield path
    elif path.exists():
        yield PolicyError(path, None, None, "not a regular file or directory")
    else:
        yield PolicyError(path, None, None, "no such file or directory")


def _directory_files(directory: Path) -> Iterator[Path | PolicyError]:
    base = directory.resolve()
    try:
        entries = sorted(directory.iterdir(), key=lambda entry: entry.name)
    except OSError as exc:
        yield PolicyError(directory, None, None, f"cannot list directory: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.suffix not in _SUFFIXES or entry.name.startswith("."):
            continue
        inside = _resolves_inside(entry, base)
        if inside is None:
            yield PolicyError(entry, None, None, "cannot resolve this link (a loop?)")
        elif not inside:
            yield PolicyError(entry, None, None, f"links outside {directory}; refusing to follow it")
        elif entry.is_file():
            yield entry
        elif not entry.is_dir():
            yield PolicyError(entry, None, None, "not a regular file (a broken link?)")


def _resolves_inside(entry: Path, base: Path) -> bool | None:
    """Whether `entry`, links followed, stays inside `base`; `None` if it cannot be resolved."""
    try:
        return entry.resolve().is_relative_to(base)
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        return None


def _load_file(file: Path | PolicyError) -> _Parsed:
    if isinstance(file, PolicyError):
        return _Parsed(file.file, None, [file])
    try:
        text = _read(file)
    except _FileFailed as failed:
        return _Parsed(file, None, [failed.error])
    return _parse(text, file)


def _read(file: Path) -> str:
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # never more, whatever the file's size
    except OSError as exc:
        raise _FileFailed(PolicyError(file, None, None, f"cannot read: {exc.strerror or exc}")) from None
    if len(raw) > MAX_FILE_BYTES:
        raise _FileFailed(_too_large(file))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _FileFailed(_not_utf8(file, raw, exc)) from None


def _too_large(file: Path) -> PolicyError:
    message = f"larger than 1 MiB ({MAX_FILE_BYTES} bytes), the limit for a policy file"
    return PolicyError(file, None, None, message)


def _not_utf8(file: Path, raw: bytes, exc: UnicodeDecodeError) -> PolicyError:
    before = raw[: exc.start]
    line_start = before.rfind(b"\n") + 1
    column = len(before[line_start:].decode("utf-8-sig", errors="replace")) + 1
    message = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); policy files must be UTF-8 text"
    return PolicyError(file, before.count(b"\n") + 1, column, message)


def _parse(text: str, file: Path) -> _Parsed:
    if len(text) > MAX_FILE_BYTES:  # characters: never fewer than the UTF-8 bytes a file would need
        return _Parsed(file, None, [_too_large(file)])
    document = _Document(file)
    try:
        document.data = _Converter(document).convert(_compose(text, file), ())
    except _FileFailed as failed:
        return _Parsed(file, None, sorted([*document.errors, failed.error], key=_position), document)
    policy = _validate(document)
    errors = sorted(document.errors, key=_position)
    return _Parsed(file, policy if not errors else None, errors, document)


def _compose(text: str, file: Path) -> Node | None:
    # The safe parser (libyaml when present) composes the same nodes with marks, in linear time;
    # the round-trip parser is quadratic in comment length.
    yaml = YAML(typ="safe")
    yaml.max_depth = MAX_DEPTH
    yaml.composer.warn_double_anchors = False  # YAML allows redefining an anchor; the latest wins
    try:
        node: Node | None = yaml.compose(text)
    except RecursionError:
        raise _FileFailed(PolicyError(file, None, None, _TOO_DEEP)) from None
    except YAMLError as exc:
        raise _FileFailed(_syntax_error(file, text, exc)) from None
    return node


def _syntax_error(file: Path, text: str, exc: YAMLError) -> PolicyError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
        if isinstance(exc, _DEPTH_ERRORS):
            message = _TOO_DEEP
        elif exc.problem and exc.context and exc.problem.startswith("but "):
            message = f"invalid YAML: {exc.context}, {exc.problem}"  # one sentence split in two
        elif exc.problem and exc.context:
            message += f" ({exc.context}"
            start = exc.context_mark
            if start and start is not mark:
                message += f" started at line {start.line + 1}, column {start.column + 1}"
            message += ")"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return PolicyError(file, line, column, message)
    if isinstance(exc, ReaderError) and isinstance(exc.character, int):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        message = f"invalid YAML: {exc.reason} (U+{exc.character:04X})"
        return PolicyError(file, line, column, message)
    return PolicyError(file, None, None, f"invalid YAML: {exc}")


class _Converter:
    """Turns composed YAML nodes into plain data, recording in a `_Document` where each part was.

    Aliases make the node graph a DAG (or a cycle): a node met again is converted again, under its
    new location, and what that adds is counted against `MAX_ALIAS_NODES` before doing it. Only the
    outermost alias of an expansion is counted, as its size already includes the aliases inside it.
    """

    def __init__(self, document: _Document) -> None:
        self._document = document
        self._sizes: dict[int, int] = {}  # nodes a subtree expands to, per node id, once converted
        self._open: set[int] = set()  # nodes being converted: meeting one again is a cycle
        self._converted = 0
        self._alias_nodes = 0
        self._expanding: Loc | None = None  # the outermost alias being expanded, if any

    def convert(self, node: Node | None, loc: Loc) -> Any:
        """Plain data for `node` (`None` for an empty document)."""
        if node is None:
            return None
        expands_alias = self._enter(node, loc)
        before = self._converted
        self._converted += 1
        self._document.values[loc] = _mark(node)
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, SequenceNode):
                return self._sequence(node, loc)
            if isinstance(node, ScalarNode):
                return self._scalar(node, loc)
            self._unsupported(node, loc)
            return None
        finally:
            self._open.discard(id(node))
            self._sizes.setdefault(id(node), self._converted - before)
            if expands_alias:
                self._expanding = None

    def _enter(self, node: Node, loc: Loc) -> bool:
        """Check `node` may be converted at `loc`; `True` if that starts expanding an alias."""
        # An alias node is the anchored node itself, so point at the collection the alias is in.
        where = self._document.mark(loc[:-1])
        if id(node) in self._open:
            message = "an alias refers to a node that contains it"
            raise _FileFailed(self._document.error(loc, message, at=where))
        if id(node) not in self._sizes or self._expanding is not None:
            return False
        self._alias_nodes += self._sizes[id(node)]
        if self._alias_nodes > MAX_ALIAS_NODES:
            message = f"aliases expand this document by more than {MAX_ALIAS_NODES} nodes; refusing it"
            raise _FileFailed(self._document.error(loc, message, at=where))
        self._expanding = loc
        return True

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any] | None:
        if node.tag != _MAP:
            self._unsupported(node, loc)
            return None
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, loc, result)
            if key is not None:
                self._document.keys[(*loc, key)] = _mark(key_node)
                result[key] = self.convert(value_node, (*loc, key))
        return result

    def _key(self, node: Node, loc: Loc, seen: dict[str, Any]) -> str | None:
        """The key's text, or `None` (and an error) when it cannot be used."""
        document = self._document
        if isinstance(node, ScalarNode) and node.tag == _STR:
            if node.value not in seen:
                return str(node.value)
            first = document.keys[(*loc, node.value)]
            message = f"duplicate key {node.value!r} (first at line {first.line}, column {first.column})"
            document.errors.append(document.error((*loc, node.value), message, at=_mark(node)))
            return None
        if node.tag == _MERGE:
            message = "YAML merge keys ('<<') are not supported; write the keys out"
        else:
            message = f"expected a string key, got {_describe_node(node)}"
        document.errors.append(document.error(loc, message, at=_mark(node)))
        document.incomplete.add(loc)
        return None

    def _sequence(self, node: SequenceNode, loc: Loc) -> list[Any] | None:
        if node.tag != _SEQ:
            self._unsupported(node, loc)
            return None
        return [self.convert(item, (*loc, index)) for index, item in enumerate(node.value)]

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        self._document.scalars[loc] = node
        text: str = node.value
        if node.tag in (_STR, _TIMESTAMP):
            return text
        if node.tag == _NULL:
            return None
        if node.tag == _BOOL:
            return text.lower() in _TRUE
        if node.tag == _INT:
            return _int(text)
        if node.tag == _FLOAT:
            value = _decimal(text)
            if isinstance(value, Decimal) and value.is_finite() and abs(value.adjusted()) > MAX_MAGNITUDE:
                if not value:
                    return Decimal(0)  # `0e-999999999` is zero, written the long way
                message = f"number {_shorten(text)} is out of range: write 0 or a number between 1e-30 and 1e30"
                self._document.errors.append(self._document.error(loc, message))
                self._document.reported.add(loc)
                return text  # fails validation where a number belongs, quietly (reported above)
            return value
        self._unsupported(node, loc)
        return None

    def _unsupported(self, node: Node, loc: Loc) -> None:
        # Never construct tagged values: that is how YAML loaders end up running code.
        message = f"unsupported YAML tag {_short_tag(node.tag)!r}"
        self._document.errors.append(self._document.error(loc, message))
        self._document.reported.add(loc)


def _mark(node: Node) -> _Mark:
    return _Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _short_tag(tag: str | None) -> str:
    tag = tag or "?"
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def _int(text: str) -> int | str:
    """A YAML integer's value; the text itself if Python cannot read it (pydantic then reports it)."""
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower())
    try:
        return sign * (int(digits[2:], base) if base else int(digits, 10))
    except ValueError:
        return text


def _decimal(text: str) -> Decimal | str:
    """A YAML float's exact value, from its text; the text itself if `Decimal` cannot read it."""
    special = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}
    try:
        return Decimal(special.get(text.lower(), text.replace("_", "")))
    except InvalidOperation:
        return text


def _validate(document: _Document) -> PolicyFile | None:
    if document.data is None:  # empty, comments only, or a bare `~`
        return PolicyFile()
    try:
        return PolicyFile.model_validate(document.data)
    except ValidationError as exc:
        document.errors.extend(_explain_all(document, exc.errors(include_url=False)))
        return None


def _explain_all(document: _Document, details: list[ErrorDetails]) -> Iterator[PolicyError]:
    """Explain each pydantic error, except those that only repeat one already reported."""
    located = [(*_document_loc(document.data, tuple(error["loc"])), error) for error in details]
    # A misspelt key is also a missing one; "did you mean" on the misspelling says both.
    misspelt = [loc for loc, _, error in located if error["type"] == "extra_forbidden"]
    meant = {(*loc[:-1], hint) for loc in misspelt if (hint := _closest_key(loc))}
    for loc, about_key, error in located:
        if any(loc[:end] in document.reported for end in range(len(loc) + 1)):
            continue
        if error["type"] == "missing" and (loc in meant or loc[:-1] in document.incomplete):
            continue
        yield _explain(document, loc, error, about_key=about_key)


def _document_loc(data: Any, loc: Loc) -> tuple[Loc, bool]:
    """A pydantic error's `loc` as a path in the document, and whether the error is about a key.

    pydantic adds parts that name nothing the user wrote: the tag of a tagged union
    (`action.simple`, `threshold.zscore.zscore`) and `[key]` for a mapping's key. They are dropped
    by following `loc` through the data: a part that is neither a key nor an index there is one of
    them, except a last key, which may be missing (a "missing required key" error).
    """
    path: list[str | int] = []
    about_key = False
    node = data
    for index, part in enumerate(loc):
        if part == "[key]":
            about_key = True
        elif isinstance(node, dict) and part in node:  # noqa: SIM114 - each branch narrows `node` for the index
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif index == len(loc) - 1 and isinstance(node, dict):
            path.append(part)
    return tuple(path), about_key


_EXPECTED: Final = {
    "string_type": "expected a string",
    "string_too_short": "expected a non-empty string",
    "decimal_parsing": "expected a number",
    "decimal_type": "expected a number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "finite_number": "expected a finite number",
    "greater_than_equal": "expected a number >= {ge}",
    "greater_than": "expected a number > {gt}",
    "less_than_equal": "expected a number <= {le}",
    "less_than": "expected a number < {lt}",
    "decimal_max_places": "expected at most {decimal_places} decimal places",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "literal_error": "expected one of {expected}",
    "enum": "expected one of {expected}",
}


def _explain(document: _Document, loc: Loc, error: ErrorDetails, *, about_key: bool = False) -> PolicyError:
    """Turn one pydantic error into a message saying what was expected and what was found."""
    kind = error["type"]
    template = _EXPECTED.get(kind)
    context = {
        key: f"{value:f}" if isinstance(value, Decimal) else value for key, value in error.get("ctx", {}).items()
    }
    expected = template.format(**context) if template else error["msg"]
    if about_key:  # a mapping's key is not one it allows (`reserve: {urgent: 0.1}`)
        return document.error(loc, f"unknown key {_shorten(str(loc[-1]))!r}: {expected}", key=True)
    if kind == "extra_forbidden":
        return document.error(loc, _unknown_key(loc), key=True)
    if kind == "missing":
        return document.error(loc[:-1], f"missing required key {loc[-1]!r}")
    got = _got(document, loc, error["input"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return document.error(loc, f"{_expected_mapping(loc)}, got {got}")
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return document.error(loc, str(error["ctx"]["error"]))
    return document.error(loc, f"{expected}, got {got}")


def _unknown_key(loc: Loc) -> str:
    key, parent = str(loc[-1]), loc[:-1]
    allowed = _allowed_keys(parent)
    noun, label = ("section", "known sections") if not parent else ("key", "allowed keys")
    message = f"unknown {noun} {key!r}"
    close = _closest_key(loc)
    if close:
        message += f"; did you mean {close!r}?"
    if allowed:
        message += f" ({label}: {', '.join(allowed)})"
    return message


def _closest_key(loc: Loc) -> str | None:
    """The allowed key most like the unknown one at `loc`, if any is close."""
    close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(loc[:-1]), n=1)
    return close[0] if close else None


def _expected_mapping(loc: Loc) -> str:
    keys = ", ".join(_allowed_keys(loc))
    if not loc:
        return f"expected a mapping of sections ({keys})"
    return f"expected a mapping with keys {keys}" if keys else "expected a mapping"


def _allowed_keys(loc: Loc) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model validating the mapping at `loc`, found by following `PolicyFile`'s annotations."""
    annotation: Any = PolicyFile
    for part in loc:
        model = _model_in(annotation)
        if isinstance(part, int):
            items = [arg for arg in get_args(annotation) if arg is not Ellipsis]  # tuple[X, ...], list[X]
            annotation = items[0] if len(items) == 1 else None
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            return None
    return _model_in(annotation)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The one model `annotation` may hold: `Model`, `Model | None`, or a union with one model in it
    (`action: warn | deny | {degrade: ...}`, through the `Annotated` layers of a tagged union)."""
    models: list[type[BaseModel]] = []
    pending = [annotation]
    while pending:
        candidate = pending.pop()
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            models.append(candidate)
        elif get_origin(candidate) in (Annotated, Union, UnionType):
            pending.extend(get_args(candidate))
    return models[0] if len(set(models)) == 1 else None


def _got(document: _Document, loc: Loc, value: Any) -> str:
    """What was found at `loc`, as the user wrote it."""
    node = document.scalars.get(loc)
    if node is None:
        return _describe_value(value)
    text: str = node.value
    if node.tag == _STR:
        return repr(_shorten(text))
    return _shorten(text) if text else "an empty value"


def _describe_node(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _shorten(str(node.value)) or "an empty value"


def _describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return _shorten(repr(value))


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _path(loc: Loc) -> str:
    """`("prices", 1, "input_mtok")` -> `prices[1].input_mtok`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _position(error: PolicyError) -> tuple[int, int]:
    return (error.line or 0, error.column or 0)


def _merge(parsed: list[_Parsed]) -> PolicySet:
    """One `PolicySet` from files in load order, or `PolicyErrors` with every file's errors."""
    errors: list[PolicyError] = []
    sections: dict[str, list[SectionEntry]] = {name: [] for name in PolicyFile.model_fields}
    first_seen: dict[tuple[str, str], str] = {}  # (section, identity) -> "file:line:column (path)"
    for one in parsed:
        errors.extend(one.errors)
        if one.policy is None or one.document is None:
            continue
        for name, entries in sections.items():
            for index, entry in enumerate(getattr(one.policy, name)):
                duplicate = _check_duplicate(one.document, (name, index), entry, first_seen)
                if duplicate is None:
                    entries.append(entry)
                else:
                    errors.append(duplicate)
    if errors:
        raise PolicyErrors(errors)
    # Sections are typed on `PolicySet`; matching names to fields is the point of this generic loop.
    content: dict[str, Any] = {name: tuple(entries) for name, entries in sections.items()}
    return PolicySet(**content, sources=tuple(one.file for one in parsed))


def _check_duplicate(
    document: _Document, loc: Loc, entry: SectionEntry, first_seen: dict[tuple[str, str], str]
) -> PolicyError | None:
    section = str(loc[0])
    key = (section, entry.identity().lower())  # the Pricer matches provider and model ignoring case
    if key in first_seen:
        message = f"duplicate {section} entry {entry.identity()!r}; first defined at {first_seen[key]}"
        return document.error(loc, message)
    mark = document.mark(loc)
    where = f"{document.file}:{mark.line}:{mark.column}" if mark else str(document.file)
    first_seen[key] = f"{where} ({_path(loc)})"
    return None
