"""One table of error codes: every code the product raises is in q4_contract.ERROR_CODES and in the table of
docs/contract.md ("Error codes"), and every code in them is raised somewhere."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import q4_contract as contract

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("fargate", "contract", "orchestrator")
#: The roots of the error hierarchy whose first argument is an error code.
ROOTS = {"Q4Error", "Rejection"}


def _trees() -> Iterator[tuple[Path, ast.Module]]:
    for directory in PRODUCT_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _error_classes(trees: list[tuple[Path, ast.Module]]) -> dict[Path, set[str]]:
    """Per file, the names that call a class deriving from Q4Error or Rejection. A name defined in several
    places (two ``ConfigurationError`` classes) means the file's own class where it defines one."""
    defined: dict[Path, dict[str, set[str]]] = {}
    for path, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                parents = set(filter(None, map(_name, node.bases)))
                defined.setdefault(path, {}).setdefault(node.name, set()).update(parents)
    every: dict[str, set[str]] = {}
    for classes in defined.values():
        for name, parents in classes.items():
            every.setdefault(name, set()).update(parents)

    def derived(bases: dict[str, set[str]]) -> set[str]:
        names = set(ROOTS)
        while True:
            more = {name for name, parents in bases.items() if parents & names} - names
            if not more:
                return names
            names |= more

    anywhere = derived(every)
    result: dict[Path, set[str]] = {}
    for path, _ in trees:
        own = defined.get(path, {})
        local = derived({**every, **own})
        result[path] = {name for name in anywhere if name not in own or name in local}
    return result


def raised_codes() -> dict[str, list[str]]:
    """Each error code the product code raises (first argument of an error class, or ``code="..."`` given to
    a document builder), with where."""
    trees = list(_trees())
    classes = _error_classes(trees)
    found: dict[str, list[str]] = {}
    for path, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            literals = [kw.value for kw in node.keywords if kw.arg == "code"]
            if _name(node.func) in classes[path] and node.args:
                literals.append(node.args[0])
            for literal in literals:
                if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.setdefault(literal.value, []).append(where)
    return found


def documented_codes() -> list[str]:
    """The codes in the first column of docs/contract.md's "Error codes" table."""
    text = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_the_scan_finds_codes_of_every_kind() -> None:
    found = raised_codes()
    # a Rejection, a Q4Error subclass two levels down, a subclass defined in another package, a keyword
    for code in ("unknown_mode", "too_few_rows", "missing_configuration", "task_crashed", "wait_timeout"):
        assert code in found, code


def test_every_raised_code_is_in_the_contract_table() -> None:
    missing = {code: where for code, where in raised_codes().items() if code not in contract.ERROR_CODES}
    assert not missing, f"codes raised but not in q4_contract.ERROR_CODES: {missing}"


def test_every_code_in_the_contract_table_is_raised() -> None:
    raised = raised_codes()
    unused = sorted(code for code in contract.ERROR_CODES if code not in raised)
    assert not unused, f"codes in q4_contract.ERROR_CODES that nothing raises: {unused}"


def test_the_document_lists_exactly_the_contract_table_once_each() -> None:
    documented = documented_codes()
    assert len(documented) == len(set(documented)), "a code is listed twice in docs/contract.md"
    assert set(documented) == set(contract.ERROR_CODES), (
        f"only in docs/contract.md: {sorted(set(documented) - set(contract.ERROR_CODES))}; "
        f"only in q4_contract.ERROR_CODES: {sorted(set(contract.ERROR_CODES) - set(documented))}"
    )


def test_every_code_says_what_it_means_and_where_it_arises() -> None:
    places = {
        contract.errors.MESSAGE,
        contract.errors.TASK,
        contract.errors.RUN,
        contract.errors.SUBMIT,
        contract.errors.STATUS,
        contract.errors.CLI,
        contract.errors.LIBRARY,
        contract.errors.CANCEL,
    }
    for code, entry in contract.ERROR_CODES.items():
        assert entry.code == code and re.fullmatch(r"[a-z][a-z0-9_]*", code)
        assert entry.meaning and entry.where and set(entry.where) <= places, code
