"""The project's strict arithmetic grammar (randopt_hpc.tasks.expression, used by countdown_qa): values
against Python's own evaluation, the bounds, and hostile input."""
from __future__ import annotations

import ast
import math
import random
import re

import pytest

from randopt_hpc.tasks import expression as cd
from tests.conftest import fastest

_AST_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

def _walk(node):
    """Python's own evaluation rules (ints stay ints, / is true division), restricted to BinOp and
    int Constant nodes, with the parser's documented bounds; raises ValueError on anything else."""
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value < 10**10:   # <= 10 digits
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        a, b = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Div) and b == 0:
            raise ValueError("division by zero")
        v = _AST_OPS[type(node.op)](a, b)
        if abs(v) > 1e12:
            raise ValueError("out of bounds")
        return v
    raise ValueError(f"node {type(node).__name__} not allowed")


def reference_value(text):
    if not isinstance(text, str) or not re.fullmatch(r"[0-9+\-*/()\s]+", text.strip(), flags=re.ASCII):
        return None
    try:
        return float(_walk(ast.parse(text.strip(), mode="eval")))
    except (SyntaxError, ValueError, RecursionError):
        return None


def reference_correct(solution, numbers, target) -> bool:
    if not isinstance(solution, str):
        return False
    literals = [int(t) for t in re.findall(r"[0-9]+", solution)]
    if sorted(literals) != sorted(numbers):
        return False
    value = reference_value(solution)
    return value is not None and abs(value - float(target)) <= 1e-5


# --------------------------------------------------------------------------- parser

@pytest.mark.parametrize("text,value", [
    ("1 + 2", 3.0), ("((44 + 19) + 35)", 98.0), ("2 * 3 + 4", 10.0), ("2 + 3 * 4", 14.0),
    ("10 - 4 - 3", 3.0), ("48 / 4 / 2", 6.0), ("(1 + 2) / 3", 1.0), ("7 / 2", 3.5),
    ("3 - 10", -7.0), ("0", 0.0), ("9999999999 * 100", 999999999900.0),
    ("(" * 32 + "1" + ")" * 32, 1.0),
])
def test_evaluate_valid(text, value):
    got = cd.evaluate_expression(text)
    assert isinstance(got, float) and got == value


@pytest.mark.parametrize("text", [
    "-1 + 2", "+1", "1 + -2", "2 * (-3)", "1 2", "1 +", "(1 + 2", "1 + 2)", "()", "1 ** 2", "2 ^ 3",
    "1.5 + 2", "1_000", "1,2", "x", "abs(1)", "٣ + 1", "１ + 1", "01 + 2", "12345678901", "1\u00a0+ 2",
    "(" * 33 + "1" + ")" * 33, "1000000 * 1000001", "1 " + "+ 1 " * 200,
])
def test_evaluate_rejects(text):
    assert cd.evaluate_expression(text) is None


HOSTILE = [
    "9**9**9", "44**19**35", "1" * 1_000_000, "(" * 100_000, "(" * 40 + "1" + ")" * 40, "__import__('os')",
    "a.b", "f(1)", "1e308*1e308", "1/0", "(1-1)/(2-2)", "1 / (3 - 3)", " ", "", None,
    "1 " * 500_000, " " * 1_000_000 + "1 + 2" + " " * 300, "9999999999*" * 20 + "1", b"1 + 2", 3, ["1"],
]


@pytest.mark.parametrize("i", range(len(HOSTILE)))
def test_hostile_expressions_are_fast_and_never_raise(i):
    text = HOSTILE[i]
    (value, ok), elapsed = fastest(lambda: (cd.evaluate_expression(text), cd.is_correct(text, [44, 19, 35], "98")))
    assert elapsed < 0.05, f"{elapsed:.3f}s"
    assert ok is False
    # Only the spaces-around-"1 + 2" case is a valid expression (the strip happens first).
    assert value is None or (value == 3.0 and isinstance(text, str) and text.strip() == "1 + 2")


def test_parser_matches_python_on_random_token_strings():
    rng = random.Random(1234)
    pieces = ["1", "2", "7", "12", "05", "100", "999", "0", "+", "-", "*", "/", "(", ")", " "]
    accepted = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        ours, theirs = cd.evaluate_expression(text), reference_value(text)
        if theirs is None:
            assert ours is None, text
        else:
            accepted += 1
            assert ours is not None and math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-12), text
    assert accepted > 200   # the comparison exercised real expressions, not only rejections


@pytest.mark.parametrize("answer,numbers,target,expected", [
    ("(1 + 2) * 3", [1, 2, 3], 9, True),
    ("3 * (2 + 1)", [3, 2, 1], "9", True),
    ("(1 + 2) * 3", [1, 2, 3], 9.000001, True),
    ("(1 + 2) * 3", [1, 2, 3], 9.0001, False),
    ("1 / 3 + 2", [1, 3, 2], "2.3333333333333335", True),
    ("05 - 2 - 3", [5, 2, 3], 0, False),
    ("00 * (1 + 2)", [0, 1, 2], 0, True),
    ("3 / 2 - 6", [3, 2, 6], "-4.5", True),
    ("47 + 47 - 52 + 98", [98, 47, 47, 52], 140, True),
    ("47 - 52 + 98", [98, 47, 47, 52], 93, False),            # a duplicate used once
    ("47 + 47 + 47 - 52 + 98", [98, 47, 47, 52], 187, False),  # used three times
    ("3 * 3", [1, 2, 3], 9, False),
    ("(1 + 2) * 3 * 1", [1, 2, 3], 9, False),
    ("(1 + 2) * 3", [1, 2, 3], "nonsense", False),
    ("(1 + 2) * 3", [1, 2, 3], None, False),
    ("(1 + 2) * 3", None, 9, False),
    ("(1 + 2) * 3", ["1", "2", "3"], 9, False),
    (None, [1, 2, 3], 9, False),
    ("", [], 0, False),
])
def test_is_correct(answer, numbers, target, expected):
    assert cd.is_correct(answer, numbers, target) is expected


