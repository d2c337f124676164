"""Reading a manifest's YAML safely, with the line of every field.

A bounded safe loader (libyaml's events, a Python composer that counts what aliases expand to and
how deep the document nests, duplicate mapping keys recorded) and a linear-time index from field
paths to lines, so every problem can name its line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from release.errors import ManifestError

# Bounds on what a manifest may be: real ones are a few KB, a few levels deep, a few hundred nodes.
MAX_BYTES = 1_000_000
MAX_NODES = 20_000    # nodes of the document with every alias expanded (~10 us each to build)
MAX_DEPTH = 64


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "a special file"


class _Refused(yaml.MarkedYAMLError):
    """A document the loader will not build (too large, too deep, recursive): not a syntax error."""


try:  # libyaml's parser (C) makes the events; composing and constructing stay in Python, bounded below
    from yaml._yaml import CParser as _Parser

    _PARSER_BYTES = True  # its error positions count UTF-8 bytes
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    _PARSER_BYTES = False


class _Loader(_Parser, yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader that bounds what a document may expand to and records duplicate mapping keys.

    An alias is a reference, so composing stays linear; what a consumer walks, though, is the
    expanded tree (a 'billion laughs' document of 1 KB expands to 9^9 nodes). The expanded size of
    every node is known when it is composed (memoised by node), so each alias adds the size of what
    it names, and the document is refused once the total passes MAX_NODES. Nesting deeper than
    MAX_DEPTH is refused before the composer's recursion can reach Python's limit.
    """

    def __init__(self, stream):
        _Parser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.sizes: dict[int, int] = {}
        self.expanded = 0
        self.depth = 0
        self.duplicates: list[tuple[int, Any, int, int]] = []  # (id of the mapping node, key, first line, line)

    def _grow(self, by: int, mark, alias: str | None) -> None:
        self.expanded += by
        if self.expanded > MAX_NODES:
            what = (f"with alias *{alias} the document expands to more than {MAX_NODES} nodes through aliases "
                    f"(an 'alias bomb'); a manifest needs a few hundred: write the values out or alias less"
                    if alias else f"the document has more than {MAX_NODES} values; a manifest needs a few hundred")
            raise _Refused(problem=what, problem_mark=mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self.sizes.get(id(node))
                if size is None:
                    raise _Refused(problem=f"alias *{event.anchor} refers to a node that contains it (a "
                                           f"recursive structure); a manifest is a tree",
                                   problem_mark=event.start_mark)
                self._grow(size, event.start_mark, event.anchor)
            return yaml.composer.Composer.compose_node(self, parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep; a manifest needs a few",
                           problem_mark=event.start_mark)
        self._grow(1, event.start_mark, None)
        node = yaml.composer.Composer.compose_node(self, parent, index)
        self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self.sizes[id(v)] for v in node.value)
        else:
            size = 1
        self.sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden: that is what a merge is for
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the constructor reports an unhashable key itself
                line = key_node.start_mark.line + 1
                if key in first:
                    self.duplicates.append((id(node), key, first[key], line))
                else:
                    first[key] = line
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self):  # the Python composer's (CParser has its own, unbounded, in C)
        return yaml.composer.Composer.get_single_node(self)

    def compose_document(self):
        return yaml.composer.Composer.compose_document(self)


def _parse(path: Path, text: str) -> tuple[Any, yaml.Node | None, _Loader]:
    """(the document, its node tree, the loader that read it) or a located ManifestError."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character first
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        mark = exc.problem_mark
        raise ManifestError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}.") from None
    except yaml.reader.ReaderError as exc:
        data = text.encode("utf-8", "surrogatepass") if _PARSER_BYTES else text
        newline = b"\n" if _PARSER_BYTES else "\n"
        before = data[:exc.position]
        line_start = before[before.rfind(newline) + 1:]
        column = len(line_start.decode("utf-8", "replace") if _PARSER_BYTES else line_start) + 1
        raise ManifestError(f"{path}: line {before.count(newline) + 1}, column {column}: "
                            f"not valid YAML ({exc.reason}; remove the character).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ManifestError(f"{path}: {where}not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, node, loader


def _read(path: Path) -> str:
    """The manifest's text: a regular file, at most MAX_BYTES, UTF-8 (else one located line)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{path}: not a regular file ({_kind_name(st.st_mode)}); give the manifest's path.")
        if st.st_size > MAX_BYTES:
            raise ManifestError(f"{path}: {st.st_size} bytes, larger than a manifest may be ({MAX_BYTES}); "
                                f"is this the manifest?")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ManifestError(f"{path}: cannot read the manifest ({reason}).") from None
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{path}: larger than a manifest may be ({MAX_BYTES} bytes); is this the manifest?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(f"{path}: line {line}, column {column}: byte {exc.start} (0x{data[exc.start]:02x}) "
                            f"is not UTF-8 ({exc.reason}); save the file as UTF-8.") from None


def _line_index(node: yaml.Node, nodes: dict[int, tuple] | None = None) -> dict[tuple, int]:
    """Map every field path in the YAML document to its 1-based line.

    Linear in the document's size: a subtree reached again through an alias is not walked again
    (its paths take the line of the first place it appears). `nodes`, when given, receives the
    first path of every mapping and sequence node (by id), for problems found per node.
    """
    out: dict[tuple, int] = {}
    seen: dict[int, tuple] = {} if nodes is None else nodes
    stack: list[tuple[yaml.Node, tuple]] = [(node, ())]
    while stack:
        current, path = stack.pop()
        out.setdefault(path, current.start_mark.line + 1)
        if not isinstance(current, (yaml.MappingNode, yaml.SequenceNode)) or id(current) in seen:
            continue
        seen[id(current)] = path
        if isinstance(current, yaml.MappingNode):
            children = []
            for key, value in current.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)[:40]
                out[path + (k,)] = key.start_mark.line + 1  # a duplicated key: the last one's line
                children.append((value, path + (k,)))
            stack.extend(reversed(children))
        else:
            for i, item in reversed(list(enumerate(current.value))):
                stack.append((item, path + (i,)))
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


