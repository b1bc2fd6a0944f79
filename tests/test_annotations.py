"""Share of public functions in earshot/ that carry full type annotations.

A public function is a module-level function or a method of a class
(properties, classmethods and staticmethods included) whose name does not
start with "_"; functions nested inside other functions are not counted.
It is fully annotated when every parameter except a method's leading
``self``/``cls`` (``*args`` and ``**kwargs`` included) has an annotation and
so does the return.

The package is read with ``ast`` only, never imported.  Run this file
directly (``python tests/test_annotations.py``) to print the share and the
list of functions still missing annotations.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "earshot"
THRESHOLD = 0.90

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


class PublicFunction(NamedTuple):
    path: str  # relative to the repository root, with "/" separators
    line: int
    name: str  # "func" or "Class.method"
    annotated: bool

    def where(self) -> str:
        return f"{self.path}:{self.line} {self.name}"


def _is_static(node: FunctionNode) -> bool:
    for dec in node.decorator_list:
        if isinstance(dec, ast.Name) and dec.id == "staticmethod":
            return True
        if isinstance(dec, ast.Attribute) and dec.attr == "staticmethod":
            return True
    return False


def fully_annotated(node: FunctionNode, *, method: bool) -> bool:
    """True when the return and every parameter but ``self``/``cls`` is annotated."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    if method and not _is_static(node) and positional:
        positional = positional[1:]  # self / cls, whatever its name
    params = [*positional, *args.kwonlyargs]
    if args.vararg is not None:
        params.append(args.vararg)
    if args.kwarg is not None:
        params.append(args.kwarg)
    return node.returns is not None and all(p.annotation is not None for p in params)


def _walk_body(body: list[ast.stmt], prefix: str, in_class: bool) -> Iterator[tuple[FunctionNode, str, bool]]:
    """Functions and methods defined in ``body``, descending into classes and
    into compound statements (``if TYPE_CHECKING:``, ``try:``) but not into
    function bodies."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield stmt, prefix + stmt.name, in_class
        elif isinstance(stmt, ast.ClassDef):
            if stmt.name.startswith("_"):
                continue  # methods of a private class are not public API
            yield from _walk_body(stmt.body, prefix + stmt.name + ".", True)
        else:
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(stmt, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    yield from _walk_body(inner, prefix, in_class)
            for handler in getattr(stmt, "handlers", []) or []:
                yield from _walk_body(handler.body, prefix, in_class)


def public_functions(package: Path = PACKAGE) -> list[PublicFunction]:
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(package.parent).as_posix()
        for node, qualname, method in _walk_body(tree.body, "", False):
            if node.name.startswith("_"):
                continue
            found.append(PublicFunction(rel, node.lineno, qualname, fully_annotated(node, method=method)))
    return found


def share(functions: list[PublicFunction]) -> float:
    return sum(f.annotated for f in functions) / len(functions) if functions else 1.0


def report(functions: list[PublicFunction]) -> str:
    missing = [f for f in functions if not f.annotated]
    done = len(functions) - len(missing)
    lines = [f"{done}/{len(functions)} public functions fully annotated ({share(functions):.1%})"]
    lines += [f.where() for f in missing]
    return "\n".join(lines)


def test_annotation_share() -> None:
    functions = public_functions()
    assert functions, f"no public functions found under {PACKAGE}"
    got = share(functions)
    assert got >= THRESHOLD, (
        f"fewer than {THRESHOLD:.0%} of public functions are fully annotated; "
        "annotate these:\n" + report(functions)
    )


def test_counting_rules() -> None:
    source = (
        "def a(x: int) -> int: ...\n"
        "def b(x) -> int: ...\n"
        "def c(x: int): ...\n"
        "def _private(x): ...\n"
        "def d(*args: int, **kwargs: str) -> None: ...\n"
        "def e(*args, **kwargs: str) -> None: ...\n"
        "class K:\n"
        "    def __init__(self, x): ...\n"
        "    def m(self, x: int) -> None: ...\n"
        "    @classmethod\n"
        "    def c(cls) -> K: ...\n"
        "    @staticmethod\n"
        "    def s(x) -> None: ...\n"
        "    @property\n"
        "    def p(self): ...\n"
        "    def n(self) -> None:\n"
        "        def inner(y): ...\n"
        "class _Hidden:\n"
        "    def m(self, x): ...\n"
    )
    tree = ast.parse(source)
    got = {
        name: fully_annotated(node, method=method)
        for node, name, method in _walk_body(tree.body, "", False)
        if not node.name.startswith("_")
    }
    assert got == {
        "a": True, "b": False, "c": False, "d": True, "e": False,
        "K.m": True, "K.c": True, "K.s": False, "K.p": False, "K.n": True,
    }


if __name__ == "__main__":
    functions = public_functions()
    print(report(functions))
    sys.exit(0 if share(functions) >= THRESHOLD else 1)
