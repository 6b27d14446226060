"""Command-line overrides of keys inside mapping-valued options, e.g.
``--model.init_args.student_model.init_args.speed 0.4`` or
``--data.init_args.augment.init_args.alpha 0.2``.

Some options are plain mappings (typed ``dict[str, Any]``) rather than classes: the Student's
``student_model`` (its architecture, built with arguments that come from the data), ``student_config``
and ``distillation_options``, a datamodule's ``augment``, a MetaTeacher's ``encoder_config``. jsonargparse,
under LightningCLI, parses a dotted option below such a mapping lossily: it drops an ``init_args``
component (its shorthand for class options), so ``student_model.init_args.speed`` lands as
``student_model.speed``; a key two levels down replaces the whole sub-mapping; and a value below the top
level stays an unparsed string.

:func:`expand_mapping_overrides` rewrites each such option before jsonargparse sees it: the value the
mapping has at that point of the command line (after the configs and overrides before it), with the key
set at its full path and the value read as YAML (``0.4`` a float, ``true`` a bool, ``[1, 2]`` a list),
becomes one option that gives the whole mapping, in the same place. Later options and configs still win.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from jsonargparse import Namespace

_NOT_DOTTED = re.compile(r"Expected a dot import path string: (\S+)")

# Options that end jsonargparse's parsing (print and exit); left out when parsing a prefix.
EXITING_OPTIONS = ("--print_config", "--help", "-h")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def expand_mapping_overrides(parse: Callable[[list[str]], Any], words: list[str]) -> list[str]:
    """``words`` with each ``--<option>.<key path> VALUE`` (or ``=VALUE``) below a mapping-valued option
    replaced by ``--<option>=<the whole mapping, as JSON>``.

    ``parse(words)`` parses a command line (jsonargparse's ``parse_args``). The whole command line is parsed
    once to find the options below a mapping (jsonargparse misplaces their keys, not the mapping); only for
    those is the prefix before them parsed, for the mapping's value at that point. A prefix that cannot be
    parsed leaves the option as it was, for jsonargparse to report.
    """
    out = list(words)
    if not any(dotted_key(word) for word in out):
        return out
    whole = parsed_or_none(parse, out)
    i = 0
    while i < len(out):
        key, equals, value = out[i][2:].partition("=")
        if not dotted_key(out[i]) or (whole is not None and find_mapping(whole, key) is None):
            i += 1
            continue
        width = 1 if equals else 2
        if not equals:
            if i + 1 >= len(out):
                break
            value = out[i + 1]
        prefix = parsed_or_none(parse, out[:i])
        target = None if prefix is None else find_mapping(prefix, key)
        if target is not None:
            option, path, mapping = target
            merged = set_path(mapping, path, read_value(value))
            out[i : i + width] = [f"--{option}={json.dumps(merged)}"]
        i += 1
    return out


def dotted_key(word: str) -> bool:
    """Whether ``word`` is an option below another one (``--a.b``; not a list append ``--a.b+``)."""
    key = word[2:].partition("=")[0]
    return word.startswith("--") and "." in key and not key.endswith("+")


def model_options(words: list[str]) -> list[str]:
    """The ``--model...`` options of a command line (each with its value), in order."""
    found: list[str] = []
    for i, word in enumerate(words):
        key, equals, _ = word.partition("=")
        if key == "--model" or key.startswith("--model."):
            takes_next = not equals and i + 1 < len(words) and not words[i + 1].startswith("--")
            found += [word, words[i + 1]] if takes_next else [word]
    return found


def parsed_or_none(parse: Callable[[list[str]], Any], words: list[str]) -> Any:
    """The subcommand's config that ``parse`` makes of ``words`` (without the options that print and
    exit), or None when they do not parse."""
    try:
        parsed = parse([word for word in words if word.partition("=")[0] not in EXITING_OPTIONS])
    except (Exception, SystemExit):  # noqa: BLE001 - jsonargparse reports it when the whole line is parsed
        return None
    return parsed[parsed.subcommand] if parsed.get("subcommand") else parsed


def find_mapping(parsed: Any, key: str) -> tuple[str, list[str], dict[str, Any]] | None:
    """``(option, key path inside it, its current mapping)`` when ``key`` names a key inside a
    mapping-valued option of ``parsed`` (the mapping is ``{}`` when the option is unset), else None."""
    parts = key.split(".")
    node: Any = parsed
    owner: Any = None  # the class_path whose init args `node` is
    for depth, part in enumerate(parts):
        if isinstance(node, dict):
            return ".".join(parts[:depth]), parts[depth:], plain(node)
        if not isinstance(node, Namespace):
            return None
        if part not in node and "class_path" in node and part not in ("class_path", "init_args"):
            owner, node = node.get("class_path"), node.get("init_args")  # jsonargparse's shorthand
            if not isinstance(node, Namespace) or part not in node:
                return None
        elif part == "init_args":
            owner = node.get("class_path")
        if part not in node:
            return None
        child = node[part]
        if child is None and depth + 1 < len(parts) and is_mapping_parameter(owner, part):
            return ".".join(parts[: depth + 1]), parts[depth + 1 :], {}
        node = child
    return None


def is_mapping_parameter(class_path: Any, name: str) -> bool:
    """Whether ``class_path``'s constructor types its argument ``name`` as a mapping (or an optional one)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        # the first constructor on the MRO that names it (a subclass may pass it on through **kwargs)
        hints = (typing.get_type_hints(klass.__init__) for klass in cls.__mro__ if "__init__" in vars(klass))
        hint = next((found[name] for found in hints if name in found), None)
    except Exception:  # noqa: BLE001 - an unresolvable annotation is not a mapping we can merge into
        return False
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(
        option in (dict, collections.abc.Mapping, collections.abc.MutableMapping)
        or typing.get_origin(option) in (dict, collections.abc.Mapping, collections.abc.MutableMapping)
        for option in options
    )


def plain(value: Any) -> Any:
    """``value`` with jsonargparse Namespaces turned into dicts (a deep copy)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def set_path(mapping: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``mapping`` with ``value`` at the key path ``path`` (missing or non-mapping levels on the
    way become empty mappings)."""
    result = plain(mapping)
    node = result
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return result


def read_value(text: str) -> Any:
    """A command-line value read as YAML, as jsonargparse reads one (``1e-4`` is a float, not a string)."""
    import yaml

    if not text.strip():
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        return float(value)
    return value


def registered_name_error(err: Exception) -> Exception | None:
    """A clear error for jsonargparse's ``Expected a dot import path string: textcnn`` (None for another
    error). jsonargparse takes a mapping ``{class_path, init_args}`` for a class and imports its
    ``class_path``, so a registered name (``textcnn``, ``eda``) works there only without ``init_args``."""
    from metakd.errors import ConfigError

    found = _NOT_DOTTED.search(str(err))
    if found is None:
        return None
    name = found.group(1)
    return ConfigError(
        f"class_path {name!r} with init_args: the config parser (jsonargparse) needs the class's dotted path "
        f"there{dotted_path_hint(name)}; a registered name works only without init_args"
    )


def dotted_path_hint(name: str) -> str:
    """`` (here: <module>.<Class>)`` for a registered student architecture or augmenter, else ``""``."""
    import datamodules  # noqa: F401  (registers the built-in augmenters)
    import metakd.students  # noqa: F401  (registers the built-in architectures)
    from datamodules.augment import AUGMENTERS
    from metakd.students.base import STUDENTS

    for registry in (STUDENTS, AUGMENTERS):
        try:
            cls = registry.get(name)
        except KeyError:
            continue
        return f" (here: {cls.__module__}.{cls.__qualname__})"
    return ""
