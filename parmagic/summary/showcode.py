"""``--show-code`` and ``--export``: the plain Python program a run is equivalent to.

The cell is kept as written, except its parallel loop: the body becomes ``loop_body(item)``,
which returns the changes the item asks of the program's objects (numbered, one per
recorded statement) and the names it bound; the main program runs it with the chosen library,
the way that library's documentation shows, and applies the changes in item order.
"""

from __future__ import annotations

import ast
import builtins
import copy
import html
import inspect
import linecache
import math
import multiprocessing
import re
import textwrap
import types

from ..analysis.body import BodyInfo
from ..analysis.itemcode import AUGMENTED_OPERATORS, WriteBackRewriter
from ..backends import load_backend
from ..errors import plural
from .program_names import Names, taken_names
from .render import themed

_OPERATOR_NODES = {name: node for node, name in AUGMENTED_OPERATORS.items()}
TAKE_BACK = '''def take_back(mine, theirs, seen=None):
    """What an item changed in its copy of one of the program's objects, made on the
    program's own object, part by part where the two have the same shape, so that the
    program's sub-objects stay its own. (parmagic does this for every object the item
    reaches, found by comparing each before and after the item; and objects of the
    program's that come back in values or changes are the program's own, not copies:
    pickle's persistent ids.)"""
    seen = {} if seen is None else seen
    if type(mine) is not type(theirs):
        return theirs
    if id(theirs) in seen:  # an object that holds itself
        return seen[id(theirs)]
    seen[id(theirs)] = mine
    if isinstance(mine, tuple):
        return tuple(take_back(a, b, seen) for a, b in zip(mine, theirs))
    if isinstance(mine, list):  # its elements may have moved: the copy's, as they are
        mine[:] = [seen.get(id(t), t) for t in theirs]
    elif isinstance(mine, dict):
        merged = {
            k: take_back(mine[k], v, seen) if k in mine else seen.get(id(v), v)
            for k, v in theirs.items()
        }
        mine.clear()
        mine.update(merged)
    elif isinstance(mine, set):
        mine.clear()
        mine.update(theirs)
    elif hasattr(mine, "shape") and hasattr(mine, "__setitem__"):  # a NumPy array
        mine[...] = theirs
    elif hasattr(mine, "__dict__"):
        take_back(vars(mine), vars(theirs), seen)
    else:
        return theirs
    return mine


def own(value, returned, item):
    """The program's own item where a value is the item's copy (one level of tuples deep,
    where parmagic follows every object)."""
    if value is returned:
        return item
    if type(value) is tuple:
        return tuple(own(part, returned, item) for part in value)
    return value'''


class _Changes(WriteBackRewriter):
    """The body's recorded statements become ``changes.append((number, values))``; each
    number's statement, with those values, is what the main program runs."""

    def __init__(
        self, replayed: frozenset[str], reductions: dict[str, int], g: Names, handed: bool
    ) -> None:
        super().__init__(replayed, reductions)
        self.g = g
        self.applied: list[tuple[str, str]] = []  # (statement to run, the original)
        if handed:  # the item goes back too, as the item left it
            kept = f"k not in ({g.changes!r}, {g.handed!r})"
            self.returns = _parse_expr(
                f"{g.changes}, {{k: v for k, v in locals().items() if {kept}}}, {g.handed}"
            )
        else:
            self.returns = _parse_expr(
                f"{g.changes}, {{k: v for k, v in locals().items() if k != {g.changes!r}}}"
            )

    def visit_Continue(self, node):
        return (
            ast.copy_location(ast.Return(copy.deepcopy(self.returns)), node)
            if (self.depth == 0)
            else node
        )

    def log(self, node: ast.stmt, method: str, *args: ast.expr, keywords=()) -> ast.stmt:
        values: list[ast.expr] = []

        def value(expr: ast.expr) -> ast.expr:
            values.append(expr)
            return ast.Name(f"\0{len(values) - 1}", ast.Load())

        one = self.g.value

        name = args[0].value
        target: ast.expr = ast.Name(name, ast.Load())
        if method in ("call", "setitem", "delitem", "augitem"):
            for key in args[1].elts:
                target = ast.Subscript(target, value(key), ast.Load())
        if method == "call":
            call_args = [value(a) for a in args[3:]]
            call_kw = [ast.keyword(k.arg, value(k.value)) for k in keywords]
            statement = ast.Expr(
                ast.Call(ast.Attribute(target, args[2].value, ast.Load()), call_args, call_kw)
            )
        elif method == "setitem":
            statement = ast.Assign([ast.Subscript(target, value(args[2]), ast.Store())], None)
            statement.value = value(args[3])
        elif method == "augitem":
            subscript = ast.Subscript(target, value(args[2]), ast.Store())
            statement = ast.AugAssign(subscript, _OPERATOR_NODES[args[3].value](), value(args[4]))
        elif method == "delitem":
            statement = ast.Delete([ast.Subscript(target, value(args[2]), ast.Del())])
        elif method == "reduce":
            operator = _OPERATOR_NODES[args[1].value]()
            statement = ast.AugAssign(ast.Name(name, ast.Store()), operator, value(args[2]))
        else:  # forget: `del name` in the body
            statement = ast.parse(f"globals().pop({name!r}, None)").body[0]
        number = len(self.applied) + 1
        shown = ast.unparse(ast.fix_missing_locations(statement))
        for index in range(len(values)):
            shown = shown.replace(f"\0{index}", f"{one}[{index}]" if len(values) > 1 else one)
        self.applied.append((shown, ast.unparse(node).splitlines()[0]))
        packed = values[0] if len(values) == 1 else ast.Tuple(values, ast.Load())
        record = _parse_expr(f"{self.g.changes}.append(())")
        record.args = [ast.Tuple([ast.Constant(number), packed], ast.Load())]
        return ast.copy_location(ast.Expr(record), node)


def _parse_expr(source: str) -> ast.expr:
    return ast.parse(source, mode="eval").body


def _body_function(
    info: BodyInfo, replayed: frozenset[str], coroutine: bool, handed: bool, g: Names
) -> tuple[str, list]:
    """``loop_body``'s source, and the numbered statements that apply its changes. ``handed``:
    items are copies (worker processes), so the item goes back as the item left it."""
    node = copy.deepcopy(info.node)
    if info.kind == "for":
        target = node.target
        parameter = target.id if isinstance(target, ast.Name) and not handed else g.item
        parameter = g.handed if handed else parameter
        rewriter = _Changes(replayed, info.reductions, g, handed)
        body = rewriter.rewrite_block(node.body)
        head = (
            []
            if parameter == getattr(target, "id", None)
            else [ast.Assign([target], ast.Name(parameter))]
        )
        statements = [
            ast.parse(f"{g.changes} = []").body[0],
            *head,
            *body,
            ast.Return(copy.deepcopy(rewriter.returns)),
        ]
        applied = rewriter.applied
        doc = "One item of the loop: the changes it asks for, and the names it bound."
        if handed:
            doc = doc.replace(", and the names it bound", ", the names it bound, and the item")
    else:
        first = node.generators[0]
        target = first.target
        parameter = target.id if isinstance(target, ast.Name) else g.item
        first.iter = ast.Tuple([ast.Name(parameter, ast.Load())], ast.Load())
        elt = ast.Tuple([node.key, node.value], ast.Load()) if info.kind == "dict" else node.elt
        applied = []
        if _one_value_per_item(info):
            statements = [ast.Return(elt)]
            doc = "One item of the comprehension: its value."
        else:
            statements = [ast.Return(ast.ListComp(elt, node.generators))]
            doc = "One item of the comprehension: its values (none when a condition drops it)."
    args = ast.arguments([], [ast.arg(parameter)], None, [], [], None, [])
    kind = ast.AsyncFunctionDef if coroutine else ast.FunctionDef
    function = kind(g.loop_body, args, [ast.Expr(ast.Constant(doc)), *statements], [], None)
    return ast.unparse(ast.fix_missing_locations(function)), applied


def _one_value_per_item(info: BodyInfo) -> bool:
    generators = info.node.generators
    return len(generators) == 1 and not generators[0].ifs and not generators[0].is_async


def _runner(
    backend: str,
    workers: int,
    method: str | None,
    iterable: str,
    shared: list[str],
    g: Names,
    chunking: tuple[int, str] = (1, ""),
) -> tuple[list[str], list[str]]:
    """(imports, lines that run loop_body over the items into ``in_order``); ``chunking``: the
    pool's chunksize and its comment."""
    sharing = ""
    if shared:
        names = ", ".join(f"{n!r}: {n}" for n in shared)
        sharing = f", initializer={g.share}, initargs=({{{names}}},)"
    method = method or multiprocessing.get_start_method()  # the platform's, as the run's
    context = f'{g.multiprocessing}.get_context("{method}")'
    if backend == "serial":
        return [], [f"{g.in_order} = map({g.loop_body}, {iterable})"]
    if backend == "futures":
        imports = [g.imported("ThreadPoolExecutor", "as_completed")]
        executor = f"{g.ThreadPoolExecutor}(max_workers={workers})"
        return imports, _executor_lines(executor, iterable, g)
    if backend == "futures:processes":
        imports = [g.imported("multiprocessing"), g.imported("ProcessPoolExecutor", "as_completed")]
        executor = f"{g.ProcessPoolExecutor}({workers}, mp_context={context}{sharing})"
        return imports, _executor_lines(executor, iterable, g)
    if backend == "asyncio":
        return [g.imported("asyncio")], [
            f"{g.semaphore} = {g.asyncio}.Semaphore({workers})  # at most {workers} at once",
            "",
            f"async def {g.limited}(item):",
            f"    async with {g.semaphore}:",
            f"        return await {g.loop_body}(item)",
            "",
            f"{g.in_order} = await {g.asyncio}.gather(*({g.limited}(item) for item in {iterable}))",
        ]
    if backend == "dask":
        return [g.imported("Client", "LocalCluster")], [
            f"{g.cluster} = {g.LocalCluster}(n_workers={workers}, threads_per_worker=1, "
            "host='127.0.0.1', dashboard_address='127.0.0.1:0')",
            f"with {g.cluster}, {g.Client}({g.cluster}) as {g.client}:",
            f"    {g.in_order} = {g.client}.gather("
            f"{g.client}.map({g.loop_body}, list({iterable}), pure=False))",
        ]
    if backend not in ("threads", "processes"):
        raise ValueError(f"no equivalent program for backend {backend!r}")
    if backend == "threads":
        imports, pool = [g.imported("ThreadPool")], f"{g.ThreadPool}({workers})"
    else:
        imports, pool = [g.imported("multiprocessing")], f"{context}.Pool({workers}{sharing})"
    return imports, [
        f"with {pool} as {g.pool}:",
        f"    {g.in_order} = {g.pool}.map({g.loop_body}, {iterable}, "
        f"chunksize={chunking[0]}){chunking[1]}",
    ]


def _executor_lines(executor: str, iterable: str, g: Names) -> list[str]:
    """concurrent.futures as its documentation shows it: submit, then as_completed."""
    return [
        f"with {executor} as {g.executor}:",
        f"    {g.futures} = {{{g.executor}.submit({g.loop_body}, item): n "
        f"for n, item in enumerate({iterable})}}",
        f"    {g.finished} = {{}}",
        f"    for {g.future} in {g.as_completed}({g.futures}):  # in the order they finish",
        f"        {g.finished}[{g.futures}[{g.future}]] = {g.future}.result()",
        f"{g.in_order} = [{g.finished}[n] for n in range(len({g.finished}))]",
    ]


def chunksize_of(report, asked: int | None) -> tuple[int, str]:
    """The pool's chunksize, as the run chunked its items (``asked``: --chunksize), and its
    comment. parmagic sizes its chunks as a run goes: then the size that makes Pool.map send
    the items in as many chunks as the run did."""
    chunks, items = report.chunks, report.item_count
    if not chunks or not items:
        return asked or 1, ""
    size = asked if asked and math.ceil(items / asked) == chunks else math.ceil(items / chunks)
    return size, f"  # as the run: {plural(items, 'item')} in {plural(chunks, 'chunk')}"


def _loads(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _stores(tree: ast.AST, skip: set[int]) -> set[str]:
    return {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in skip
    }


def _free_names(tree: ast.AST) -> list[str]:
    """Names the cell reads but never assigns (nor imports, defines or takes as arguments):
    they come from the notebook."""
    assigned = _stores(tree, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            assigned.add(node.name)
        elif isinstance(node, ast.alias):
            assigned.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            assigned.add(node.arg)
    read = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    free = [n for n in read if n not in assigned and not hasattr(builtins, n)]
    return list(dict.fromkeys(free))


def _definition(name: str, value: object) -> str:
    """How the script defines a name the notebook had: source, import, literal, or a TODO."""
    if isinstance(value, types.ModuleType):
        alias = "" if value.__name__ == name else f" as {name}"
        return f"import {value.__name__}{alias}"
    if isinstance(value, types.FunctionType | type):
        module = getattr(value, "__module__", "__main__")
        if module != "__main__":
            alias = "" if value.__qualname__ == name else f" as {name}"
            return f"from {module} import {value.__qualname__}{alias}"
        found = _notebook_source(value)
        if found:
            return found
        return f"# TODO: define {name} (defined in the notebook; its source was not found)"
    text = repr(value)
    try:
        if len(text) <= 2000 and ast.literal_eval(text) == value:
            return f"{name} = {text}"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return f"{name} = None  # TODO: define {name} (a {kind} in the notebook)"


def _notebook_source(value: type | types.FunctionType) -> str | None:
    """The source of a notebook function or class. A function's code names its cell, which
    ``inspect`` finds; a class names only its module, and a notebook's ``__main__`` has no
    file of its own (``inspect`` may even read the wrong file there: Python 3.13 looks up
    ``__firstlineno__`` in whatever ``__main__.__file__`` is), so for a class the cells
    IPython cached are searched, the latest first."""
    if not isinstance(value, type):
        try:
            return textwrap.dedent(inspect.getsource(value)).rstrip()
        except (OSError, TypeError):
            return None
    for filename, entry in reversed(list(linecache.cache.items())):
        if not (isinstance(entry, tuple) and len(entry) == 4):
            continue
        source = "".join(entry[2])
        try:
            tree = ast.parse(source, filename)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == value.__name__:
                return ast.get_source_segment(source, node)
    return None


PLACEHOLDER = "__parmagic_loop_code__"


def _main_lines(
    cell: ast.Module, loop: ast.AST, info: BodyInfo, run: list[str], g: Names
) -> list[str]:
    """The cell's own code, with the loop replaced by ``run`` and the applying of results."""
    marker = ast.Expr(ast.Name(PLACEHOLDER, ast.Load()))
    if info.kind == "for":
        _replace(cell, loop, marker)
    else:
        _replace(cell, loop, ast.Name(g.loop_values, ast.Load()), before=marker)
    lines = []
    for line in ast.unparse(cell).splitlines():
        if line.strip() != PLACEHOLDER:
            lines.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        lines += [indent + part if part else "" for part in run]
    return lines


def _results_lines(
    info: BodyInfo, applied: list[tuple[str, str]], handed: bool, g: Names
) -> list[str]:
    """The main program's side: the items' results, applied in item order."""
    if info.kind != "for":
        gather = {"set": "set", "dict": "dict"}.get(info.kind, "list")
        if _one_value_per_item(info):
            return [f"{g.loop_values} = {gather}({g.in_order})"]
        return [f"{g.loop_values} = {gather}(v for values in {g.in_order} for v in values)"]
    changes, names, number, value = g.changes, g.names, g.number, g.value
    lines = [
        f"{names} = {{}}",
        f"for {changes}, {names} in {g.in_order}:",
        f"    for {number}, {value} in {changes}:",
    ]
    if handed:
        item, returned = g.item, g.returned
        lines[1:] = [
            f"for {item}, ({changes}, {names}, {returned}) in zip({g.items}, {g.in_order}):",
            f"    {g.take_back}({item}, {returned})  # what the item changed in its copy",
            f"    {names} = {{k: {g.own}(v, {returned}, {item}) for k, v in {names}.items()}}",
            f"    for {number}, {value} in {changes}:",
            f"        {value} = {g.own}({value}, {returned}, {item})",
        ]
    for position, (statement, original) in enumerate(applied, 1):
        keyword = "if" if position == 1 else "elif"
        lines += [
            f"        {keyword} {number} == {position}:  # {original}",
            f"            {statement}",
        ]
    if not applied:
        lines.append("        pass")
    return [*lines, f"globals().update({names})  # the loop's names, as its last item left them"]


def _shared_names(cell: ast.Module, loop: ast.AST, function: str) -> list[str]:
    """Names the cell makes before the loop that ``loop_body`` reads: handed to each worker
    process (threads and coroutines see the main program's names themselves)."""
    inside = {id(n) for n in ast.walk(loop)}
    inside |= {  # a comprehension's variables are its own, not the program's names
        id(n)
        for c in ast.walk(cell)
        if isinstance(c, ast.comprehension)
        for n in ast.walk(c.target)
    }
    return sorted(_stores(cell, inside) & _loads(ast.parse(function)))


def program(
    source: str,
    info: BodyInfo,
    replayed: frozenset[str],
    ns: dict,
    backend: str,
    workers: int,
    start_method: str | None,
    export: bool,
    chunking: tuple[int, str] = (1, ""),
) -> str:
    """The whole program: notebook definitions (for ``--export``), ``loop_body``, then the
    cell with its loop replaced by the chosen library's code, under the main guard.
    ``chunking``: the pool's chunksize and its comment (:func:`chunksize_of`)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    cell = compile(source, "<cell>", "exec", flags)
    loop = _find(cell, info.node)
    notebook = [n for n in _free_names(cell) if n in ns]
    g = Names(taken_names(cell, ns, notebook), ns)
    kind = load_backend(backend)
    coroutine = kind.runs_coroutines
    handed = kind.copies_kernel_objects and info.kind == "for"  # items get copies of objects
    function, applied = _body_function(info, replayed, coroutine, handed, g)
    iterable = ast.unparse(loop.iter if info.kind == "for" else loop.generators[0].iter)
    listed = [f"{g.items} = list({iterable})"] if handed else []
    iterable = g.items if handed else iterable
    # large captured values go once to each worker: its pool's initializer, as parmagic maps them
    shared = _shared_names(cell, loop, function) if kind.maps_shared_memory else []
    imports, run = _runner(backend, workers, start_method, iterable, shared, g, chunking)
    main = _main_lines(cell, loop, info, listed + run + _results_lines(info, applied, handed, g), g)
    out = [f"# What `%%parallel -b {backend}` ran, as a plain Python program (by parmagic).", ""]
    out += imports + _notebook_lines(notebook, ns, export)
    if shared:
        out += ["", "", f"def {g.share}(names):"]
        out += ['    """The values the loop reads, for each worker process: they are made under']
        out += ['    the main guard below, which worker processes do not run."""']
        out += ["    globals().update(names)"]
    guard = 'if __name__ == "__main__":'
    if coroutine:  # the body may use what the cell opened (a session): one coroutine holds both
        inner = [*function.splitlines(), "", *main]
        out += ["", "", f"async def {g.main}():", *_indented(inner), "", "", guard]
        out += [f"    {g.asyncio}.run({g.main}())"]
    else:
        helpers = [_helpers(g), "", ""] if handed else []
        out += ["", "", function, "", "", *helpers, guard, *_indented(main)]
    return "\n".join(out) + "\n"


def _notebook_lines(notebook: list[str], ns: dict, export: bool) -> list[str]:
    """What the program takes from the notebook: its definitions (``--export``), or its names."""
    if not notebook:
        return []
    if not export:
        return ["", f"# From the notebook: {', '.join(notebook)}"]
    classes = {  # a value's class from the notebook, so the TODO can be filled in
        type(ns[n]).__name__: type(ns[n])
        for n in notebook
        if type(ns[n]).__module__ == "__main__" and type(ns[n]).__name__ not in notebook
    }
    definitions = [_definition(name, cls) for name, cls in classes.items()]
    definitions += [_definition(n, ns[n]) for n in notebook]
    return ["", "# From the notebook:", *definitions]


def _helpers(g: Names) -> str:
    """take_back and own, under the names the program gives them."""
    text = re.sub(r"\btake_back\(", f"{g.take_back}(", TAKE_BACK)
    return re.sub(r"\bown\(", f"{g.own}(", text)


def _indented(lines: list[str]) -> list[str]:
    return ["    " + line if line else "" for line in lines]


def _find(tree: ast.AST, wanted: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if type(node) is type(wanted) and (node.lineno, node.col_offset) == (
            wanted.lineno,
            wanted.col_offset,
        ):
            return node
    raise LookupError("the loop was not found in the cell")


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST, before: ast.stmt | None = None) -> None:
    """Put ``new`` where ``old`` was; ``before``: a statement to insert ahead of the statement
    that holds ``old``."""
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if not isinstance(value, list):
                continue
            for index, child in enumerate(value):
                if child is old:
                    value[index] = new
                    return
                holds_old = isinstance(child, ast.stmt) and any(n is old for n in ast.walk(child))
                if before is not None and holds_old:
                    _replace(child, old, new)
                    value.insert(index, before)
                    return


# How each kind of token is coloured: the page theme's editor colour (JupyterLab and Notebook
# 7 define them, light and dark), else pygments' default colour (the classic Notebook, whose
# stylesheet has no rules for pygments' classes); more style where the editor adds it.
CODE_COLOURS = {
    "Keyword": ("keyword", "#008000", "font-weight:bold"),
    "Operator.Word": ("keyword", "#aa22ff", "font-weight:bold"),
    "Name.Builtin": ("builtin", "#008000", ""),
    "Name.Function": ("def", "#0000ff", ""),
    "Name.Class": ("def", "#0000ff", "font-weight:bold"),
    "Name.Namespace": ("def", "#0000ff", "font-weight:bold"),
    "Literal.String": ("string", "#ba2121", ""),
    "Literal.Number": ("number", "#666666", ""),
    "Comment": ("comment", "#3d7b7b", "font-style:italic"),
    "Operator": ("operator", "#666666", ""),
}


def highlighted(code: str) -> str:
    """Python as a pygments code block, ``<div class="highlight"><pre>``, each token's colour
    in its own style attribute (see CODE_COLOURS): styles survive a page's sanitiser, and a
    page-wide style block (what IPython's ``Code`` adds) would paint a classic Notebook's every
    output."""
    from pygments.lexers import PythonLexer
    from pygments.token import STANDARD_TYPES

    spans = []
    for kind, text in PythonLexer().get_tokens(code):
        text, css = html.escape(text, quote=False), STANDARD_TYPES.get(kind, "")
        style = _token_style(kind)
        styled = f" style='{style}'" if style else ""
        spans.append(f"<span class='{css}'{styled}>{text}</span>" if css else text)
    return f"<div class='highlight'><pre>{''.join(spans)}</pre></div>"


def _token_style(kind) -> str:
    while kind is not None:
        colours = CODE_COLOURS.get(str(kind).removeprefix("Token."))
        if colours is not None:
            name, plain, more = colours
            return f"{themed('color', (plain, f'--jp-mirror-editor-{name}-color'))};{more}"
        kind = kind.parent
    return ""
