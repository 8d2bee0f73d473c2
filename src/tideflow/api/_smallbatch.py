"""Stateless steps on small batches without Polars' query planner.

``DataFrame.filter``, ``select`` and ``with_columns`` plan and optimize a lazy query at every
call: 20-40 us however few rows the frame holds. A low-latency job's micro-batches hold a few
rows, so that fixed cost is most of what such a step costs. For those batches this module
evaluates the step's expressions itself, over NumPy views of the columns (zero-copy for
numeric columns without nulls), when every expression belongs to a small subset:

- columns, ``Dyn`` literals (plain Python ints and floats) and Boolean literals, aliases;
- ``+ - * / // %`` between numeric operands, negation;
- ``== != < <= > >=`` between numeric operands, or Boolean ones;
- ``& | ^ ~`` between Boolean operands;
- casts between numeric types that cannot lose a value.

The expression tree is read once, when the step is built, from
``Expr.meta.serialize(format="json")`` (Polars 2.x). An expression outside the subset, or a
tree in a shape this module does not know (another Polars version), gives no small path: the
step then always runs through Polars. The dtypes come from Polars itself: for every input
schema seen, each subexpression's result dtype is computed once on an empty frame, and the
operands are cast to it before the NumPy operation, so results have Polars' dtypes,
wrap-around and literal typing. Where NumPy and Polars disagree, the batch goes to Polars: a
read column holding nulls (or of a non-numeric dtype that is not only passed through), an
integer division or modulo by zero (Polars gives null) or of the type's minimum by -1, a
comparison of floats holding NaN (Polars orders NaN above every number and equal to itself).
Integer ``//`` and ``%`` round towards minus infinity in both; for floats Polars computes
``floor(a / b)`` and ``a - b * floor(a / b)``, and so does this module.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = ["SMALL_BATCH_ROWS", "SmallStep", "compile_filter", "compile_select"]

#: Batches of at most this many rows take the small path (measured: with q1's ``select`` and
#: q2's ``filter``, Polars' planned call costs the same as the NumPy evaluation at about
#: this size; see bench/nexmark/README.md, session 6).
SMALL_BATCH_ROWS = 1024

_ARITH = {"Plus", "Minus", "Multiply", "TrueDivide", "FloorDivide", "Modulus"}
_COMPARE = {"Eq", "NotEq", "Lt", "LtEq", "Gt", "GtEq"}
_LOGIC = {"And", "Or", "Xor"}
_UFUNC: dict[str, Callable[..., Any]] = {
    "Plus": np.add,
    "Minus": np.subtract,
    "Multiply": np.multiply,
    "TrueDivide": np.true_divide,
    "FloorDivide": np.floor_divide,
    "Modulus": np.remainder,
    "Eq": np.equal,
    "NotEq": np.not_equal,
    "Lt": np.less,
    "LtEq": np.less_equal,
    "Gt": np.greater,
    "GtEq": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}
_NUMPY: dict[Any, Any] = {  # Polars dtype -> NumPy scalar type
    pl.Int8: np.int8,
    pl.Int16: np.int16,
    pl.Int32: np.int32,
    pl.Int64: np.int64,
    pl.UInt8: np.uint8,
    pl.UInt16: np.uint16,
    pl.UInt32: np.uint32,
    pl.UInt64: np.uint64,
    pl.Float32: np.float32,
    pl.Float64: np.float64,
    pl.Boolean: np.bool_,
}


class _Unsupported(Exception):
    """The expression (or its dtypes) is outside the subset: Polars evaluates it."""


class _Fallback(Exception):
    """This batch's values are where NumPy and Polars differ: Polars evaluates it."""


# -- the expression tree ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "col", "lit", "alias", "bin", "not", "neg", "cast"
    expr: pl.Expr  # the subexpression itself (for its dtype)
    children: tuple[_Node, ...] = ()
    name: str = ""  # column name, alias, or the binary operator
    value: Any = None  # literal value, or the cast's target dtype


def _parse(tree: Any) -> _Node:
    """One node of ``Expr.meta.serialize(format="json")``; ``_Unsupported`` outside the subset."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise _Unsupported
    ((kind, body),) = tree.items()
    try:
        expr = pl.Expr.deserialize(io.StringIO(json.dumps(tree)), format="json")
    except (pl.exceptions.PolarsError, ValueError, TypeError):
        raise _Unsupported from None
    if kind == "Column" and isinstance(body, str):
        return _Node("col", expr, name=body)
    if kind == "Literal" and isinstance(body, dict) and len(body) == 1:
        ((how, val),) = body.items()
        if how == "Dyn" and isinstance(val, dict) and len(val) == 1:
            ((typ, v),) = val.items()
            if typ == "Int" and isinstance(v, int) and not isinstance(v, bool):
                return _Node("lit", expr, value=v)
            if typ == "Float" and isinstance(v, float):
                return _Node("lit", expr, value=v)
        if how == "Scalar" and val in ({"Boolean": True}, {"Boolean": False}):
            return _Node("lit", expr, value=val["Boolean"])
        raise _Unsupported
    if kind == "Alias" and isinstance(body, list) and len(body) == 2 and isinstance(body[1], str):
        return _Node("alias", expr, (_parse(body[0]),), name=body[1])
    if kind == "BinaryExpr" and isinstance(body, dict):
        op = body.get("op")
        if op in _ARITH or op in _COMPARE or op in _LOGIC:
            return _Node("bin", expr, (_parse(body.get("left")), _parse(body.get("right"))), op)
        raise _Unsupported
    if kind == "Function" and isinstance(body, dict):
        args = body.get("input")
        if isinstance(args, list) and len(args) == 1:
            fn = body.get("function")
            if fn == {"Boolean": "Not"}:
                return _Node("not", expr, (_parse(args[0]),))
            if fn == "Negate":
                return _Node("neg", expr, (_parse(args[0]),))
        raise _Unsupported
    if kind == "Cast" and isinstance(body, dict) and body.get("options") in ("Strict", "NonStrict"):
        target = body.get("dtype")
        if isinstance(target, dict) and target.get("Literal") in {str(t) for t in _NUMPY}:
            dtype = getattr(pl, target["Literal"])
            return _Node("cast", expr, (_parse(body.get("expr")),), value=dtype)
        raise _Unsupported
    raise _Unsupported


def _reads_column(node: _Node) -> bool:
    return node.kind == "col" or any(_reads_column(c) for c in node.children)


def _compile(expr: Any) -> _Node:
    if isinstance(expr, str):
        return _Node("col", pl.col(expr), name=expr)
    if not isinstance(expr, pl.Expr):
        raise _Unsupported
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except (pl.exceptions.PolarsError, ValueError, TypeError):
        raise _Unsupported from None
    node = _parse(tree)
    if not _reads_column(node):  # a literal alone is one row, broadcast: Polars' business
        raise _Unsupported
    return node


# -- binding to an input schema -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class _Bound:
    """A node with the dtypes Polars gives it for one input schema."""

    node: _Node
    dtype: pl.DataType
    children: tuple[_Bound, ...]
    np_type: Any  # NumPy type the operands are cast to (None: none)
    #: A binary node whose right operand is one value (reads no column) and left one a column:
    #: Polars divides floats by multiplying with the reciprocal then (on more than one row).
    scalar_right: bool = False
    #: The operands are cast to a float type.
    floats: bool = False


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype in _NUMPY and dtype != pl.Boolean


def _lossless(src: pl.DataType, dst: pl.DataType) -> bool:
    if src == dst:
        return True
    if src == pl.Boolean:
        return _is_numeric(dst)
    if src.is_integer() and dst.is_integer():
        a, b = np.iinfo(_NUMPY[src]), np.iinfo(_NUMPY[dst])
        return bool(b.min <= a.min and a.max <= b.max)
    if src.is_integer() and dst.is_float():
        return dst == pl.Float64 or np.iinfo(_NUMPY[src]).bits <= 16
    return src == pl.Float32 and dst == pl.Float64


def _bind(node: _Node, empty: pl.DataFrame) -> _Bound:
    try:
        dtype = empty.select(node.expr).to_series().dtype
    except pl.exceptions.PolarsError:
        raise _Unsupported from None
    kids = tuple(_bind(c, empty) for c in node.children)
    np_type: Any = None
    if node.kind == "col" or node.kind == "alias":
        return _Bound(node, dtype, kids, None)
    if node.kind == "lit":
        if dtype not in _NUMPY:
            raise _Unsupported
        return _Bound(node, dtype, kids, None)
    types = [k.dtype for k in kids]
    if node.kind == "bin":
        op = node.name
        common = dtype
        if op in _ARITH:
            if not (_is_numeric(dtype) and all(_is_numeric(t) for t in types)):
                raise _Unsupported
            np_type = _NUMPY[dtype]
        elif op in _COMPARE:
            if all(t == pl.Boolean for t in types):
                if op not in ("Eq", "NotEq"):
                    raise _Unsupported
                np_type = np.bool_
            elif all(_is_numeric(t) for t in types):
                try:  # the supertype Polars compares in: that of the sum
                    common = empty.select(kids[0].node.expr + kids[1].node.expr).to_series().dtype
                except pl.exceptions.PolarsError:
                    raise _Unsupported from None
                if common not in _NUMPY:
                    raise _Unsupported
                np_type = _NUMPY[common]
            else:
                raise _Unsupported
        elif not all(t == pl.Boolean for t in types):  # & | ^ on integers are bitwise
            raise _Unsupported
        for i, k in enumerate(kids):  # a constant (-1 too) must keep its value in the type
            if np_type is not None and not _reads_column(k.node):  # it is cast to
                value = _constant(k.node)
                _check_literal(value, np_type)
                other = kids[1 - i] if len(kids) == 2 else None
                whole = isinstance(value, int) and not isinstance(value, bool)
                if (
                    whole
                    and k.node.kind != "lit"
                    and other is not None
                    and other.dtype.is_integer()
                ):
                    # A computed constant (not a literal, whose type Polars chooses to fit)
                    # is cast to the integer column's type first: ``u8_col / -lit(1)`` is
                    # null there (-1 is no UInt8).
                    _check_literal(value, _NUMPY[other.dtype])
            elif np_type is not None and np_type is not np.bool_ and not _lossless(k.dtype, common):
                # Polars casts such a column non-strictly: a value that does not fit (UInt64
                # above 2**63 - 1 in Int64) is null there; NumPy would wrap it around.
                raise _Unsupported
    elif node.kind == "not":
        if types[0] != pl.Boolean:
            raise _Unsupported
    elif node.kind == "neg":
        if not (_is_numeric(dtype) and types[0] == dtype):
            raise _Unsupported
    elif node.kind == "cast":
        if types[0] not in _NUMPY or not _lossless(types[0], node.value) or dtype != node.value:
            raise _Unsupported
        np_type = _NUMPY[dtype]
    if dtype not in _NUMPY:
        raise _Unsupported
    scalar_right = node.kind == "bin" and not _reads_column(node.children[1])
    floats = np_type is not None and np_type is not np.bool_ and np.issubdtype(np_type, np.floating)
    return _Bound(
        node, dtype, kids, np_type, scalar_right and _reads_column(node.children[0]), floats
    )


def _constant(node: _Node) -> Any:
    """The value of a subexpression that reads no column."""
    if node.kind == "lit":
        return node.value
    try:
        return pl.select(node.expr).item()
    except (pl.exceptions.PolarsError, ValueError):
        raise _Unsupported from None


def _check_literal(value: Any, np_type: Any) -> None:
    if isinstance(value, bool) or np_type is np.bool_:
        if not (isinstance(value, bool) and np_type is np.bool_):
            raise _Unsupported
        return
    if np.issubdtype(np_type, np.integer):
        info = np.iinfo(np_type)
        if not (isinstance(value, int) and info.min <= value <= info.max):
            raise _Unsupported


# -- evaluation -------------------------------------------------------------------------------------
#: A compiled node: the frame -> its value (a NumPy array, or a Python scalar for literals).
Eval = Callable[[pl.DataFrame], Any]


def _series_of(name: str, values: npt.NDArray[Any], dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, values, dtype=dtype)


try:  # Polars' own constructors, without the checks of the public ones (about 1 us, not 8)
    from polars.datatypes.constructor import numpy_type_to_constructor

    def _fast_series(name: str, values: npt.NDArray[Any], dtype: pl.DataType) -> pl.Series:
        make = numpy_type_to_constructor(values, values.dtype.type)
        return pl.Series._from_pyseries(make(name, values, False))

    _probe = np.array([1.5, -0.0], dtype=np.float32)
    if _fast_series("x", _probe, pl.Float32()).equals(_series_of("x", _probe, pl.Float32())):
        _series_of = _fast_series
except Exception:  # another Polars: the public constructors  # pragma: no cover
    pass


def _column(name: str) -> Eval:
    def value(frame: pl.DataFrame) -> Any:
        col = frame.get_column(name)
        if col.null_count():
            raise _Fallback
        return col.to_numpy()

    return value


def _literal(value: Any) -> Eval:
    return lambda frame: value


def _compile_bound(b: _Bound) -> Eval:
    """The node as a closure over its compiled operands."""
    node = b.node
    if node.kind == "col":
        if b.dtype not in _NUMPY:
            raise _Unsupported  # computed with: must be numeric (passing through is elsewhere)
        return _column(node.name)
    if node.kind == "lit":
        return _literal(node.value)
    if node.kind == "alias":
        return _compile_bound(b.children[0])
    kids = [_compile_bound(c) for c in b.children]
    t = b.np_type
    if node.kind == "not":
        (inner,) = kids
        return lambda frame: np.logical_not(inner(frame))
    if node.kind == "neg":
        (inner,) = kids
        return lambda frame: np.negative(np.asarray(inner(frame), dtype=t))
    if node.kind == "cast":
        (inner,) = kids
        return lambda frame: np.asarray(inner(frame)).astype(t)
    op, (lhs, rhs) = node.name, kids
    ufunc = _UFUNC[op]
    if op in _LOGIC:
        return lambda frame: ufunc(lhs(frame), rhs(frame))
    floats, by_reciprocal = b.floats, b.scalar_right

    def operands(frame: pl.DataFrame) -> tuple[Any, Any]:
        return np.asarray(lhs(frame), dtype=t), np.asarray(rhs(frame), dtype=t)

    if op in _COMPARE:

        def compare(frame: pl.DataFrame) -> Any:
            left, right = operands(frame)
            if floats and (np.isnan(left).any() or np.isnan(right).any()):
                raise _Fallback  # Polars: NaN equals NaN and is above every number
            return ufunc(left, right)

        return compare
    if floats and op in ("TrueDivide", "FloorDivide", "Modulus"):

        def divide(frame: pl.DataFrame) -> Any:
            # Polars: q = a / b (by one value: a times its reciprocal, on more than one row),
            # then floor(q) and a - b * floor(q); NumPy's own // and % differ near multiples.
            left, right = operands(frame)
            if by_reciprocal and frame.height > 1:
                q = left * (right.dtype.type(1) / right)
            else:
                q = np.true_divide(left, right)
            if op == "TrueDivide":
                return q
            floor = np.floor(q)
            return floor if op == "FloorDivide" else left - right * floor

        return divide
    if floats and op == "Minus" and not _reads_column(b.children[0].node):

        def minus_from(frame: pl.DataFrame) -> Any:
            # Polars rewrites 0 - column as -column: 0.0 - 0.0 is -0.0 there.
            left, right = operands(frame)
            if left.ndim == 0 and left == 0:
                return np.negative(right)
            return left - right

        return minus_from
    if op in ("FloorDivide", "Modulus"):
        lowest = np.iinfo(t).min if np.issubdtype(t, np.signedinteger) else None
        divisor = b.children[1].node
        if divisor.kind == "lit" and divisor.value not in (0, -1):
            return lambda frame: ufunc(*operands(frame))  # a constant divisor: always defined

        def int_divide(frame: pl.DataFrame) -> Any:
            left, right = operands(frame)
            if not right.all():
                raise _Fallback  # Polars: null
            if lowest is not None and ((right == -1) & (left == lowest)).any():
                raise _Fallback
            return ufunc(left, right)

        return int_divide
    return lambda frame: ufunc(*operands(frame))


@dataclasses.dataclass(frozen=True, slots=True)
class _Output:
    """One output column: passed through (``source``) or computed (``value``)."""

    name: str
    source: str | None
    value: Eval | None
    dtype: pl.DataType
    np_type: Any


def _passed(node: _Node) -> str | None:
    """The column a node passes through unchanged (under aliases), or None."""
    while node.kind == "alias":
        node = node.children[0]
    return node.name if node.kind == "col" else None


def _output(name: str, node: _Node, empty: pl.DataFrame) -> _Output:
    source = _passed(node)
    if source is not None:  # its dtype does not matter: the column goes on as it is
        return _Output(name, source, None, pl.Null(), None)
    b = _bind(node, empty)
    if b.dtype not in _NUMPY:
        raise _Unsupported
    return _Output(name, None, _compile_bound(b), b.dtype, _NUMPY[b.dtype])


# -- the steps --------------------------------------------------------------------------------------
class SmallStep:
    """A filter, select or with_columns step evaluated without the planner for small batches.

    Call it with a batch: the step's result, or None when the batch must go through Polars
    (values NumPy and Polars treat differently, or a schema outside the subset).

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"auction": [123, 7, 246], "price": [10, 20, 30]})
    >>> step = compile_filter(pl.col("auction") % 123 == 0)
    >>> step(df).rows()
    [(123, 10), (246, 30)]
    >>> eur = [(pl.col("price") * 0.908).alias("eur")]
    >>> compile_select(eur, {}, replace=False)(df).equals(df.select(eur))
    True
    >>> compile_filter(pl.col("auction").is_in([7])) is None
    True
    """

    def __init__(self, mode: str, nodes: list[tuple[str, _Node]]) -> None:
        self._mode = mode  # "filter", "select" or "with_columns"
        self._nodes = nodes
        self._plans: dict[tuple[Any, ...], list[_Output] | None] = {}
        # The columns computed with (passed-through ones are read as they are): their dtypes
        # choose the plan.
        self._reads = sorted(
            {n for _, node in nodes if _passed(node) is None for n in _columns(node)}
        )

    def prepare(self, schema: Mapping[str, pl.DataType] | None) -> None:
        """Type the expressions for ``schema`` now (when the flow is built), not at the first
        batch (about a millisecond of Polars calls on empty frames)."""
        if schema is not None and all(n in schema for n in self._reads):
            self._bind({n: schema[n] for n in self._reads})

    def _plan(self, frame: pl.DataFrame) -> list[_Output] | None:
        # Numeric dtypes have no parameters: their classes identify them (a cheap key).
        try:
            key = tuple([type(frame.get_column(n).dtype) for n in self._reads])
        except pl.exceptions.ColumnNotFoundError:
            return None
        try:
            return self._plans[key]
        except KeyError:
            pass
        return self._bind({n: frame.get_column(n).dtype for n in self._reads})

    def _bind(self, schema: dict[str, pl.DataType]) -> list[_Output] | None:
        key = tuple(type(schema[n]) for n in self._reads)
        plan: list[_Output] | None
        try:  # (parameterized dtypes, e.g. Datetime, are only passed through: same plan)
            empty = pl.DataFrame(schema=schema)
            plan = [_output(name, node, empty) for name, node in self._nodes]
        except (_Unsupported, pl.exceptions.PolarsError, TypeError, ValueError):
            plan = None
        if plan and self._mode == "filter" and plan[0].source is None:
            plan = plan if plan[0].dtype == pl.Boolean else None
        self._plans[key] = plan
        return plan

    def __call__(self, frame: pl.DataFrame) -> pl.DataFrame | None:
        # (here, not at the top: the runtime package imports this one's users)
        from tideflow.runtime._frames import filter_mask, frame_of

        plan = self._plan(frame)
        if plan is None:
            return None
        height = frame.height
        cols: list[pl.Series] = []
        try:
            with np.errstate(all="ignore"):
                for out in plan:
                    if out.value is None:
                        assert out.source is not None
                        col = frame.get_column(out.source)
                        if self._mode == "filter":
                            if col.null_count() or col.dtype != pl.Boolean:
                                return None
                            return filter_mask(frame, col.to_numpy())
                        cols.append(col if col.name == out.name else col.alias(out.name))
                        continue
                    arr = np.asarray(out.value(frame), dtype=out.np_type)
                    if arr.shape != (height,):
                        arr = np.broadcast_to(arr, (height,)).copy()
                    if self._mode == "filter":
                        return filter_mask(frame, arr)
                    cols.append(_series_of(out.name, arr, out.dtype))
        except (_Fallback, pl.exceptions.ColumnNotFoundError):
            return None  # (a missing column: Polars' error names it)
        if self._mode == "select":
            return frame_of(cols)
        out_cols = list(frame.iter_columns())
        names = {c.name: i for i, c in enumerate(out_cols)}
        for col in cols:
            if col.name in names:
                out_cols[names[col.name]] = col
            else:
                names[col.name] = len(out_cols)
                out_cols.append(col)
        return frame_of(out_cols)


def _columns(node: _Node) -> set[str]:
    if node.kind == "col":
        return {node.name}
    return set().union(*(_columns(c) for c in node.children)) if node.children else set()


def compile_filter(
    predicate: pl.Expr, schema: Mapping[str, pl.DataType] | None = None
) -> SmallStep | None:
    """The small path of ``filter(predicate)``, or None when it is outside the subset.

    ``schema``: the input columns' dtypes when known, to type the expressions at once.
    """
    try:
        step = SmallStep("filter", [("", _compile(predicate))])
    except _Unsupported:
        return None
    step.prepare(schema)
    return step


def compile_select(
    exprs: list[Any] | tuple[Any, ...],
    named: Mapping[str, Any],
    *,
    replace: bool,
    schema: Mapping[str, pl.DataType] | None = None,
) -> SmallStep | None:
    """The small path of ``select`` (``replace`` False) or ``with_columns`` (True); or None.

    Names must be unique (Polars refuses duplicates; that error stays Polars'). ``schema``: the
    input columns' dtypes when known, to type the expressions at once.
    """
    nodes: list[tuple[str, _Node]] = []
    try:
        for e in exprs:
            nodes.append((e if isinstance(e, str) else _output_name(e), _compile(e)))
        for name, e in named.items():
            nodes.append((name, _compile(e)))
    except _Unsupported:
        return None
    names = [n for n, _ in nodes]
    if not nodes or len(set(names)) != len(names):
        return None
    step = SmallStep("with_columns" if replace else "select", nodes)
    step.prepare(schema)
    return step


def _output_name(expr: Any) -> str:
    """Polars' name for the column ``expr`` makes."""
    if not isinstance(expr, pl.Expr):
        raise _Unsupported
    try:
        return expr.meta.output_name()
    except pl.exceptions.PolarsError:
        raise _Unsupported from None
