"""The house rules a newcomer relies on: options described once, short functions, rules
stated where they apply (not as references to a document the repository lacks)."""

import ast
import pathlib

from parmagic.options import options_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "parmagic"
LONGEST_FUNCTION = 60  # lines: more is a sign of steps without names


def test_the_readme_options_table_is_made_from_the_options_module():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- options-table:begin -->\n", "<!-- options-table:end -->"
    assert begin in readme and end in readme, "the README lost its options-table markers"
    table = readme.split(begin)[1].split(end)[0]
    assert table == options_table(), "run: python tools/options_table.py"


def test_no_function_of_the_package_is_longer_than_the_limit():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long, long


def test_the_package_states_its_rules_instead_of_citing_a_specification():
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "§" in line
    ]
    assert not citing, citing
