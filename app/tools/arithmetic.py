"""Safe arithmetic for the `calculator` tool: Python's `ast` walked by hand, never `eval`.

Sizes are bounded so that no expression (`9**9**9`, `(10**999)**999`) can hang the loop
or exhaust memory: integers stay under `MAX_INT_BITS`, nesting under `MAX_DEPTH`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_EXPRESSION_LENGTH = 1000
MAX_INT_BITS = 10_000
"""About 3000 decimal digits: well under Python's int-to-str limit (4300 digits)."""
MAX_DEPTH = 100
SIGNIFICANT_DIGITS = 12

Number = int | float

_BINARY: dict[type[ast.operator], tuple[str, Callable[[Number, Number], Number]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class CalculationError(ValueError):
    """The expression cannot be evaluated; the message says why, for the model to read."""


def calculate(expression: str) -> str:
    """Evaluate `expression` and format the result, e.g. `"7/2"` → `"3.5"`.

    Raises `CalculationError` for anything that is not bounded arithmetic on numbers.
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculationError(
            f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    if not expression.strip():
        raise CalculationError("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"invalid syntax: {exc.msg} (column {exc.offset})") from exc
    except (ValueError, MemoryError, RecursionError) as exc:
        raise CalculationError("the expression cannot be parsed") from exc
    return format_number(_evaluate(tree.body, depth=0))


def format_number(value: Number) -> str:
    """Integers exactly; floats to 12 significant digits, so `0.1+0.2` reads `0.3`."""
    if isinstance(value, int):
        return str(value)
    rounded = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if rounded == 0:
        return "0"  # also turns -0.0 into "0"
    if rounded.is_integer() and abs(rounded) < 1e16:
        return str(int(rounded))
    return repr(rounded)


def _evaluate(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise CalculationError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Constant):
        return _constant(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, depth + 1)
        right = _evaluate(node.right, depth + 1)
        return _binary(type(node.op), left, right)
    raise CalculationError(_unsupported(node))


def _constant(value: object) -> Number:
    # bool is an int subclass; `True + 1` is not arithmetic on numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculationError(f"only numbers are allowed, not {value!r}")
    return _checked(value)


def _binary(op: type[ast.operator], left: Number, right: Number) -> Number:
    symbol, apply = _BINARY[op]
    if op is ast.Pow:
        _check_power(left, right)
    try:
        result = apply(left, right)
    except ZeroDivisionError as exc:
        raise CalculationError("division by zero") from exc
    except OverflowError as exc:
        raise CalculationError(f"the result of `{symbol}` is too large") from exc
    return _checked(result)


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse integer powers whose result would exceed `MAX_INT_BITS` before computing them."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return  # float powers overflow with OverflowError; negative ones shrink
    if abs(base) <= 1:
        return
    lower_bound_bits = (abs(base).bit_length() - 1) * exponent + 1
    if lower_bound_bits > MAX_INT_BITS:
        raise CalculationError("the exponent is too large")


def _checked(value: object) -> Number:
    if isinstance(value, complex):
        raise CalculationError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculationError("the result is too large")
    if not isinstance(value, int | float):
        raise CalculationError("the result is not a number")
    return value


def _unsupported(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return f"names are not allowed: {node.id}"
    if isinstance(node, ast.Call):
        return "function calls are not allowed"
    if isinstance(node, ast.Attribute):
        return "attribute access is not allowed"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator `{_operator_text(node)}` is not supported; use + - * / ** %"
    return f"{type(node).__name__} is not supported; use numbers, + - * / ** % and parentheses"


def _operator_text(node: ast.BinOp | ast.UnaryOp) -> str:
    symbols = {
        ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
        ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.Invert: "~", ast.Not: "not",
    }
    return symbols.get(type(node.op), type(node.op).__name__)
