"""The emitter of the scaffolding tokens (``neardup-v2``, unchanged from ``neardup-v1``): see
:mod:`kernelbook_lib.neardup_tokens`. Nothing here runs the code it reads."""

from __future__ import annotations

import ast

from kernelbook_lib.neardup_tokens import (
    _BINOP, _BOOL, _CMPOP, _FUNCTIONAL, _UNARY, CANONICAL, HARNESS_FUNCTIONS, LAYOUT_METHODS,
    MAX_KEPT_STRING, NUM, OPERATOR_FUNCTIONS, PROTOCOL_METHODS, STR, TENSOR_METHODS, Unsupported, _ATTR, _fold,
    _is_docstring, _is_main_guard, _is_super_init, _names, _strip_layout,
)  # fmt: skip

class Emitter:
    """Writes one parsed module as normalised tokens (see the module docstring), and the
    *operations* it uses (``ops``: library calls and operators) on the side."""

    def __init__(self, code: str, tree: ast.Module) -> None:
        self.out: list[str] = []
        self.ops: list[str] = []
        self.aliases: dict[str, str] = {}
        self.module_roots: set[str] = set()
        # The attributes the module assigns (renamed, even where read before the assignment),
        # and those it assigns and never reads (``self.inplace = inplace`` that nothing uses:
        # the assignment is left out, and so is a parameter only it used). Found in the text.
        refs: dict[str, int] = {}
        plain: dict[str, int] = {}
        stored: set[str] = set()
        for attr, assign in _ATTR.findall(code):
            refs[attr] = refs.get(attr, 0) + 1
            if assign:
                stored.add(attr)
                if assign == "=":
                    plain[attr] = plain.get(attr, 0) + 1
        self.stored_attrs = stored
        self.dead_attrs = {attr for attr, count in plain.items() if refs[attr] == count}
        self.attr_names: dict[str, str] = {}
        self.module_names: dict[str, str] = {}
        self.methods: dict[str, str] = {}
        self.scopes: list[tuple[dict[str, str], dict[str, str]]] = []  # (args, locals) per function
        self._collect_module_names(tree.body)

    # names ----------------------------------------------------------------------------------

    def _collect_module_names(self, body: list[ast.stmt]) -> None:
        """Module-level classes, functions and assigned names, numbered in definition order, and
        the methods of the module's classes (not the nn.Module protocol)."""
        counts = {"C": 0, "f": 0, "g": 0}

        def define(name: str, prefix: str) -> None:
            if name not in self.module_names:
                self.module_names[name] = f"{CANONICAL}{prefix}{counts[prefix]}"
                counts[prefix] += 1

        for node in body:
            kind = type(node)
            if kind is ast.ClassDef:
                define(node.name, "C")
                for item in node.body:
                    if type(item) in (ast.FunctionDef, ast.AsyncFunctionDef):
                        name = item.name
                        if not (name.startswith("__") and name.endswith("__")) and name not in PROTOCOL_METHODS:
                            self.methods.setdefault(name, f"{CANONICAL}m{len(self.methods)}")
            elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
                if node.name not in HARNESS_FUNCTIONS:
                    define(node.name, "f")
            elif kind in (ast.Assign, ast.AnnAssign, ast.AugAssign):
                targets = node.targets if kind is ast.Assign else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if type(sub) is ast.Name:
                            define(sub.id, "g")
            elif kind in (ast.Import, ast.ImportFrom):
                self._import(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if type(node) is ast.Import:
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                self.module_roots.add(alias.name.split(".")[0])
        elif node.module and not node.level:
            self.module_roots.add(node.module.split(".")[0])
            for alias in node.names:
                if alias.name != "*":
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _name(self, ident: str, store: bool = False) -> str:
        if self.scopes:
            args, local = self.scopes[-1]
            found = args.get(ident) or local.get(ident)
            if found:
                return found
            if store:
                local[ident] = name = f"{CANONICAL}v{len(local)}"
                return name
        return self.module_names.get(ident) or self.aliases.get(ident) or ident

    def _attr(self, attr: str) -> str:
        if attr in self.methods:
            return self.methods[attr]
        if attr in self.stored_attrs:
            name = self.attr_names.get(attr)
            if name is None:
                self.attr_names[attr] = name = f"{CANONICAL}p{len(self.attr_names)}"
            return name
        return attr

    def flat(self, node: ast.expr) -> str | None:
        """A ``name.attr.attr`` chain as one dotted token (aliases spelled out, canonical
        names, ``torch.nn.functional.X`` as ``torch.X``); None when not rooted at a name."""
        parts = []
        while type(node) is ast.Attribute:
            parts.append(self._attr(node.attr))
            node = node.value
        if type(node) is not ast.Name:
            return None
        parts.append(self._name(node.id))
        path = ".".join(reversed(parts))
        if path.startswith(_FUNCTIONAL):
            path = "torch." + path[len(_FUNCTIONAL) :]
        return path

    def _is_module_path(self, path: str | None) -> bool:
        return path is not None and path.split(".", 1)[0] in self.module_roots

    # statements -----------------------------------------------------------------------------

    def module(self, tree: ast.Module) -> list[str]:
        for node in tree.body:
            kind = type(node)
            if kind in (ast.FunctionDef, ast.AsyncFunctionDef) and node.name in HARNESS_FUNCTIONS:
                continue
            if _is_main_guard(node):
                continue
            self.stmt(node)
        return self.out

    def body(self, nodes: list[ast.stmt]) -> None:
        for node in nodes:
            self.stmt(node)

    def clause(self, keyword: str, nodes: list[ast.stmt]) -> None:
        """An optional clause (``else``, ``finally``): its keyword, then its body, if it has one."""
        if nodes:
            self.out.append(keyword)
            self.body(nodes)

    def stmt(self, node: ast.stmt) -> None:
        out = self.out
        kind = type(node)
        if kind is ast.Expr:
            if _is_docstring(node) or _is_super_init(node):
                return
            self.expr(node.value)
        elif kind is ast.Assign:
            for target in node.targets:
                self.target(target)
                out.append("=")
            self.expr(node.value)
        elif kind is ast.Return:
            out.append("return")
            if node.value is not None:
                self.expr(node.value)
        elif kind is ast.AugAssign:
            self.target(node.target)
            op = _BINOP[type(node.op)]
            out.append(op + "=")
            self.ops.append(op)
            self.expr(node.value)
        elif kind is ast.AnnAssign:
            if node.value is not None:
                self.target(node.target)
                out.append("=")
                self.expr(node.value)
        elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
            self.function(node)
        elif kind is ast.ClassDef:
            self.klass(node)
        elif kind in (ast.Import, ast.ImportFrom):
            self._import(node)
        elif kind is ast.If:
            if _is_main_guard(node):
                return
            out.append("if")
            self.expr(node.test)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind in (ast.For, ast.AsyncFor):
            out.append("for")
            self.target(node.target)
            out.append("in")
            self.expr(node.iter)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind is ast.While:
            out.append("while")
            self.expr(node.test)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind in (ast.With, ast.AsyncWith):
            out.append("with")
            for item in node.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    out.append("as")
                    self.target(item.optional_vars)
            self.body(node.body)
        elif kind is ast.Raise:
            out.append("raise")
            if node.exc is not None:
                self.expr(node.exc)
        elif kind is ast.Assert:
            out.append("assert")
            self.expr(node.test)
        elif kind is ast.Try or kind.__name__ == "TryStar":
            out.append("try")
            self.body(node.body)
            for handler in node.handlers:
                out.append("except")
                if handler.type is not None:
                    self.expr(handler.type)
                if handler.name:
                    out.append(self._name(handler.name, store=True))
                self.body(handler.body)
            self.clause("else", node.orelse)
            self.clause("finally", node.finalbody)
        elif kind is ast.Delete:
            out.append("del")
            for target in node.targets:
                self.expr(target)
        elif kind in (ast.Pass, ast.Global, ast.Nonlocal):
            return
        elif kind in (ast.Break, ast.Continue):
            out.append(kind.__name__.lower())
        else:  # match statements and anything newer: rare in modules; the fallback covers them
            raise Unsupported(kind.__name__)

    def klass(self, node: ast.ClassDef) -> None:
        out = self.out
        for decorator in node.decorator_list:
            out.append("@")
            self.expr(decorator)
        bases = [self.flat(base) or "?" for base in node.bases]
        name = self._name(node.name, store=True)
        # The header is one token: the class's own name is canonical and adds nothing; its bases
        # say what kind of module it is.
        out.append(f"class({','.join(bases)})" if name.startswith(CANONICAL) else f"class {name}({','.join(bases)})")
        for keyword in node.keywords:
            self.expr(keyword.value)
        for item in node.body:
            if type(item) in (ast.FunctionDef, ast.AsyncFunctionDef):
                self.function(item, method=True)
            else:
                self.stmt(item)

    def _dead(self, node: ast.stmt, params: dict[str, str] | None = None) -> bool:
        """A statement that changes nothing the task depends on: ``self.x = ...`` for an
        attribute nothing reads, or ``x = x`` once layout-only calls are left out."""
        if type(node) is not ast.Assign or len(node.targets) != 1:
            return False
        target = node.targets[0]
        if type(target) is ast.Attribute:
            return (
                target.attr in self.dead_attrs and type(target.value) is ast.Name and params is not None
                and params.get(target.value.id) == f"{CANONICAL}a0"
            )  # fmt: skip
        if type(target) is ast.Name:
            value = _strip_layout(node.value)
            return type(value) is ast.Name and value.id == target.id
        return False

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool = False) -> None:
        out = self.out
        name = self.methods.get(node.name, node.name) if method else self._name(node.name, store=True)
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        params = list(zip(positional, defaults))
        if a.vararg:
            params.append((a.vararg, None))
        params += list(zip(a.kwonlyargs, a.kw_defaults))
        if a.kwarg:
            params.append((a.kwarg, None))
        first = {params[0][0].arg: f"{CANONICAL}a0"} if method and params else {}
        body = [s for s in node.body if not self._dead(s, first)]
        if method and node.name == "__init__" and not node.decorator_list and all(
            type(s) is ast.Pass or _is_docstring(s) or _is_super_init(s) for s in body
        ):
            return  # nothing left but super().__init__(): the same as no __init__
        # A parameter the body never reads (a method's first, ``self``, excepted) is left out:
        # ``__init__(self, dim, inplace=False)`` that ignores ``inplace`` is ``__init__(self, dim)``.
        info = [_names(statement) for statement in body]
        loaded: set[str] = set()
        for loads, _ in info:
            loaded.update(loads)
        kept = [(p, d) for i, (p, d) in enumerate(params) if (i == 0 and first) or p.arg in loaded]
        for decorator in node.decorator_list:
            out.append("@")
            self.expr(decorator)
        # The header is one token: the arguments get canonical names in order, so their count
        # is all there is to say (the defaults follow).
        out.append(f"def {name}/{len(kept)}")
        for _, default in kept:
            if default is not None:
                self.expr(default)
        args = {p.arg: f"{CANONICAL}a{i}" for i, (p, _) in enumerate(kept)}
        self.scopes.append((args, {}))
        self.body(_fold(body, info) if len(body) > 1 else body)
        self.scopes.pop()

    # expressions ----------------------------------------------------------------------------

    def target(self, node: ast.expr) -> None:
        kind = type(node)
        if kind is ast.Name:
            self.out.append(self._name(node.id, store=True))
        elif kind in (ast.Tuple, ast.List):
            for element in node.elts:
                self.target(element)
        elif kind is ast.Starred:
            self.out.append("*")
            self.target(node.value)
        else:
            self.expr(node)

    def call(self, node: ast.Call) -> None:
        out = self.out
        func = node.func
        args = node.args
        callee = None
        if type(func) is ast.Attribute and not self._is_module_path(receiver := self.flat(func.value)):
            attr = func.attr
            if attr in LAYOUT_METHODS and not args and not node.keywords:
                self.expr(func.value)  # x.contiguous() is x
                return
            if not self._attr(attr).startswith(CANONICAL):  # a method of a value, not a submodule
                # x.sum(1) is torch.sum(x, 1); another method is .name(x, ...)
                callee = f"torch.{attr}" if attr in TENSOR_METHODS else f".{attr}"
                args = [func.value, *args]
        if callee is None:
            if type(func) is ast.Attribute:  # a module path's function, or a submodule's call
                callee = None if receiver is None else f"{receiver}.{self._attr(func.attr)}"
                if callee is not None and callee.startswith(_FUNCTIONAL):
                    callee = "torch." + callee[len(_FUNCTIONAL) :]
            else:
                callee = self.flat(func)
        if callee in OPERATOR_FUNCTIONS and len(args) == 2 and not node.keywords and not any(type(a) is ast.Starred for a in args):
            op = OPERATOR_FUNCTIONS[callee]
            self.expr(args[0])
            out.append(op)
            self.ops.append(op)
            self.expr(args[1])
            return
        if callee is None:
            self.expr(func)
            out.append("(")
        else:
            out.append(callee + "(")
            if not callee.startswith(CANONICAL):
                self.ops.append(callee)
        if callee != "super":  # super(Cls, self) is super()
            for arg in args:
                self.expr(arg)
        for keyword in node.keywords:
            out.append(f"{keyword.arg}=" if keyword.arg else "**")
            self.expr(keyword.value)
        out.append(")")

    def expr(self, node: ast.expr) -> None:
        out = self.out
        kind = type(node)
        if kind is ast.Name:
            out.append(self._name(node.id, store=type(node.ctx) is ast.Store))
        elif kind is ast.Attribute:
            path = self.flat(node)
            if path is None:
                parts = []
                while type(node) is ast.Attribute:
                    parts.append(self._attr(node.attr))
                    node = node.value
                self.expr(node)
                out.extend("." + p for p in reversed(parts))
            else:
                out.append(path)
        elif kind is ast.Call:
            self.call(node)
        elif kind is ast.Constant:
            value = node.value
            if value is None or value is True or value is False or value is Ellipsis:
                out.append(repr(value))
            elif isinstance(value, (int, float, complex)):
                out.append(NUM)
            elif isinstance(value, str) and len(value) <= MAX_KEPT_STRING and value.isidentifier():
                out.append(repr(value))
            else:
                out.append(STR)
        elif kind is ast.BinOp:
            self.expr(node.left)
            op = _BINOP[type(node.op)]
            out.append(op)
            self.ops.append(op)
            self.expr(node.right)
        elif kind is ast.UnaryOp:
            operand = node.operand
            if type(node.op) is ast.USub and type(operand) is ast.Constant and isinstance(operand.value, (int, float)):
                out.append(NUM)  # -1 is a number like 1
            else:
                op = _UNARY[type(node.op)]
                out.append(op)
                self.ops.append("u" + op)
                self.expr(operand)
        elif kind is ast.Subscript:
            self.expr(node.value)
            out.append("[")
            self.expr(node.slice)
            out.append("]")
        elif kind is ast.Tuple or kind is ast.List or kind is ast.Set:
            out.append("(" if kind is ast.Tuple else "[" if kind is ast.List else "{")
            for element in node.elts:
                self.expr(element)
            out.append(")" if kind is ast.Tuple else "]" if kind is ast.List else "}")
        elif kind is ast.Compare:
            self.expr(node.left)
            for op, right in zip(node.ops, node.comparators):
                out.append(_CMPOP[type(op)])
                self.expr(right)
        elif kind is ast.BoolOp:
            word = _BOOL[type(node.op)]
            for i, value in enumerate(node.values):
                if i:
                    out.append(word)
                self.expr(value)
        elif kind is ast.Slice:
            if node.lower is not None:
                self.expr(node.lower)
            out.append(":")
            if node.upper is not None:
                self.expr(node.upper)
            if node.step is not None:
                out.append(":")
                self.expr(node.step)
        elif kind is ast.IfExp:
            self.expr(node.body)
            out.append("if")
            self.expr(node.test)
            out.append("else")
            self.expr(node.orelse)
        elif kind is ast.Dict:
            out.append("{")
            for key, value in zip(node.keys, node.values):
                if key is None:
                    out.append("**")
                else:
                    self.expr(key)
                    out.append(":")
                self.expr(value)
            out.append("}")
        elif kind is ast.Starred:
            out.append("*")
            self.expr(node.value)
        elif kind in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
            out.append("[")
            for comp in node.generators:  # targets first, so they are named before their use
                out.append("for")
                self.target(comp.target)
                out.append("in")
                self.expr(comp.iter)
                for cond in comp.ifs:
                    out.append("if")
                    self.expr(cond)
            if kind is ast.DictComp:
                self.expr(node.key)
                out.append(":")
                self.expr(node.value)
            else:
                self.expr(node.elt)
            out.append("]")
        elif kind is ast.Lambda:
            a = node.args
            params = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]
            args = {p.arg: f"{CANONICAL}a{i}" for i, p in enumerate(params)}
            out.append(f"lambda/{len(params)}")
            self.scopes.append((args, {}))
            self.expr(node.body)
            self.scopes.pop()
        elif kind is ast.JoinedStr:
            out.append(STR)
        elif kind is ast.NamedExpr:
            self.target(node.target)
            out.append(":=")
            self.expr(node.value)
        elif kind in (ast.Await, ast.Yield, ast.YieldFrom):
            out.append(kind.__name__.lower())
            if node.value is not None:
                self.expr(node.value)
        else:
            raise Unsupported(kind.__name__)
