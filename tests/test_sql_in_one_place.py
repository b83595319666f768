"""Every SQL statement lives in store.py: the rule a newcomer relies on to find a query, held by a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import voicetune

PACKAGE = Path(voicetune.__file__).parent
SQL = re.compile(r"\bSELECT\b.+\bFROM\b|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
                 r"|\b(?:CREATE|ALTER|DROP)\s+(?:TABLE|INDEX)\b|\bBEGIN\s+IMMEDIATE\b", re.S)
EXECUTE = {"execute", "executemany", "executescript"}


def sql_outside_store(source: str, name: str) -> list[str]:
    """`name:line` of each database call and each string holding a SQL statement in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTE:
            found.append(f"{name}:{node.lineno} .{node.func.attr}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"{name}:{node.lineno} {node.value.split()[0]} ...")
    return found


def test_no_module_but_store_holds_sql():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "store.py"
             for hit in sql_outside_store(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))]
    assert found == []


def test_the_check_sees_a_query_and_a_call_and_not_prose():
    source = ('def f(conn):\n'
              '    """One UPDATE decides, filtered by owner."""\n'
              '    conn.execute(q)\n'
              '    return "SELECT id FROM projects WHERE name = ?"\n')
    assert sql_outside_store(source, "m.py") == ["m.py:3 .execute()", "m.py:4 SELECT ..."]
    assert sql_outside_store((PACKAGE / "store.py").read_text(encoding="utf-8"), "store.py") != []
