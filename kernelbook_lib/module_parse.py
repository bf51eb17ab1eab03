"""Reading a PyTorch module file: the one parse and the shared reading behind the module
analysers (:mod:`kernelbook_lib.module_judge_facts` for the static judge's difficulty,
:mod:`kernelbook_lib.module_describe` for the template prompt generator) and the kernel screen
(:mod:`kernelbook_lib.screen_facts`).

Dataset code is untrusted: it is only ever parsed with :func:`ast.parse` (literals are read with
:func:`ast.literal_eval`), never executed, imported or evaluated. Every walk here uses an explicit
stack (no recursion), so deeply nested code cannot exhaust the interpreter's stack.

One reading serves every consumer:

* :func:`parse_code` is the one parse (it never raises; compile-time warnings are silenced under a
  lock, so a ``-W error`` environment cannot turn an invalid escape in a dataset string into a
  syntax error; the lock serialises only the parse, which holds the GIL anyway).
* :func:`child_fields`, :func:`children` and :func:`chain` are the traversal the explicit-stack
  walks share.
* :class:`ImportTable` reads the import statements once, into the exact bindings (``F`` ->
  ``torch.nn.functional``, for display) and the names that denote torch namespaces and objects
  (for recognising operations; the conventional ``torch``/``nn``/``F`` count even when a scraped
  file forgot to import them).
* The layout: top-level classes and functions are the module's *units*; ``get_inputs`` and
  ``get_init_inputs`` are test inputs, not computation; ``__init__``-like methods are set-up code.
"""

from __future__ import annotations

import ast
import threading
import warnings

# --- parsing ---------------------------------------------------------------------------------

_PARSE_LOCK = threading.Lock()


def parse_code(code: str) -> tuple[ast.Module | None, str]:
    """``(tree, "")`` or ``(None, reason)``; never raises. The reason never quotes the code."""
    try:
        with _PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code), ""
    except SyntaxError as exc:  # includes IndentationError, and null bytes on Python 3.11.4+
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return None, f"SyntaxError: {exc.msg}{where}"
    except UnicodeError:  # lone surrogates cannot be encoded for the parser
        return None, "source is not valid Unicode (UnicodeError)"
    except ValueError:  # null bytes on older Pythons
        return None, "source contains null bytes (ValueError)"
    except RecursionError:
        return None, "nested too deeply for the parser (RecursionError)"
    except MemoryError:
        return None, "too complex for the parser (parser stack overflow)"


# --- traversal -------------------------------------------------------------------------------

# Fields that never hold child nodes worth visiting: names, flags, and the expression context /
# operator singletons (``Load()``, ``Add()``), which are inspected through their parent.
_NON_CHILD_FIELDS = frozenset(
    ("ctx", "op", "ops", "id", "attr", "name", "arg", "kind", "level", "module", "type_comment",
     "is_async", "conversion", "lineno", "col_offset", "end_lineno", "end_col_offset", "n", "s")
)
#: Node type -> the fields that may hold child nodes (a cache filled by :func:`child_fields`;
#: hot loops read it directly and call :func:`child_fields` on a miss).
CHILD_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: ()}


def child_fields(node_type: type) -> tuple[str, ...]:
    """The fields of a node type that may hold child nodes (cached per type)."""
    fields = CHILD_FIELDS.get(node_type)
    if fields is None:
        fields = tuple(f for f in node_type._fields if f not in _NON_CHILD_FIELDS)
        CHILD_FIELDS[node_type] = fields
    return fields


def children(node: ast.AST, fields: tuple[str, ...]) -> list[ast.AST]:
    """The child nodes of ``node`` in its ``fields``, in source order (a faster
    ``ast.iter_child_nodes``)."""
    found: list[ast.AST] = []
    for name in fields:
        value = getattr(node, name, None)
        if value is None:
            continue
        if type(value) is list:
            found.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            found.append(value)
    return found


def chain(node: ast.expr) -> tuple[str | None, list[str]]:
    """Root name and attribute parts of ``a.b.c`` (parts exclude the root); root None if the
    chain does not start at a plain name (``super().x``, ``f(x).y``)."""
    parts: list[str] = []
    while type(node) is ast.Attribute:
        parts.append(node.attr)
        node = node.value
    parts.reverse()
    if type(node) is ast.Name:
        return node.id, parts
    return None, parts


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    root, parts = chain(node)  # type: ignore[arg-type]
    if root is None:
        return None
    return ".".join([root, *parts]) if parts else root


# --- imports ---------------------------------------------------------------------------------

# The torch namespaces a ``from torch... import name`` brings in as a namespace, not an object.
_TORCH_NAMESPACES = frozenset(("nn", "functional", "linalg", "fft", "special"))
# Names that denote torch even without an import: scraped files often rely on the conventions.
_TORCH_ROOTS = frozenset(("torch", "nn", "F", "functional"))


class ImportTable:
    """What the import statements of a module bind, read once for both consumers.

    * ``aliases``: each local name bound by an absolute import, mapped to the dotted name it
      stands for (``F`` -> ``torch.nn.functional``, ``relu`` -> ``torch.nn.functional.relu``; a
      plain ``import a.b`` binds ``a``). Used to spell operations as the source means them.
    * ``torch_roots``: names that denote a torch namespace (``torch``, ``nn``, ``F`` and
      ``functional`` by convention, plus every name an import binds to torch or one of its
      namespaces); ``torch_names``: names imported from a torch namespace, mapped to their name
      there (``from torch.nn import Linear as L`` -> ``L: Linear``). Used to recognise operations.
    """

    __slots__ = ("aliases", "torch_roots", "torch_names")

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.torch_roots: set[str] = set(_TORCH_ROOTS)
        self.torch_names: dict[str, str] = {}

    @classmethod
    def of(cls, nodes: list[ast.AST]) -> ImportTable:
        """The table of every import statement among ``nodes``, in their order."""
        table = cls()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                table.add(node)
        return table

    def add(self, node: ast.Import | ast.ImportFrom) -> None:
        """Record one import statement (a later binding of the same alias replaces an earlier one)."""
        aliases = self.aliases
        if type(node) is ast.Import:
            for alias in node.names:
                name = alias.name
                if alias.asname:
                    aliases[alias.asname] = name
                else:
                    top = name.split(".")[0]
                    aliases.setdefault(top, top)
                if name == "torch" or name.startswith("torch."):
                    self.torch_roots.add(alias.asname or name.split(".")[0])
            return
        module = node.module or ""
        if module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        if module != "torch" and not module.startswith("torch."):
            return
        for alias in node.names:
            local = alias.asname or alias.name
            if alias.name in _TORCH_NAMESPACES:
                self.torch_roots.add(local)
            elif alias.name == "init":
                continue
            elif alias.name != "*":
                self.torch_names[local] = alias.name

    def resolve(self, dotted: str) -> str:
        """``dotted`` with its first name replaced by what the imports bind it to."""
        head, _, rest = dotted.partition(".")
        base = self.aliases.get(head, head)
        return f"{base}.{rest}" if rest else base


def _display(resolved: str) -> str:
    """Short, conventional spelling: ``torch.nn.functional.x`` -> ``F.x``, ``torch.nn.X`` -> ``nn.X``."""
    if resolved.startswith("torch.nn.functional."):
        return "F." + resolved[len("torch.nn.functional."):]
    if resolved.startswith("torch.nn."):
        return "nn." + resolved[len("torch.nn."):]
    return resolved


# --- layout ----------------------------------------------------------------------------------

#: The functions of a KernelBook file that build test inputs: not part of what the module computes.
INPUT_FUNCTIONS = frozenset(("get_inputs", "get_init_inputs"))
_SETUP_FUNCS = frozenset(("__init__", "extra_repr", "__repr__", "__str__"))


def _is_setup_func(name: str) -> bool:
    """Set-up code (``__init__``, ``reset_parameters``, ``init_weights``...), not computation."""
    return name in _SETUP_FUNCS or name.lstrip("_").startswith(("init", "reset", "weight_init"))


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        type(test) is ast.Compare
        and type(test.left) is ast.Name
        and test.left.id == "__name__"
    )


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _returned(fn: ast.FunctionDef | None) -> ast.expr | None:
    """The value of the function's single top-level ``return`` (None when absent or several)."""
    if fn is None:
        return None
    returns = [n for n in fn.body if isinstance(n, ast.Return)]
    return returns[0].value if len(returns) == 1 else None
