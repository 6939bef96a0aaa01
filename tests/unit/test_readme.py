"""The README against the code: the configuration table's defaults and variables, the test command.

The configuration table (README section "Configuration", columns variable | default | meaning) is
read generically, so a row added to it or a variable added to ``load_settings`` is checked
without touching this file. A default cell holds, for each variable of its row (several are
separated by `` / ``):

* ``empty`` or ``unset``: the variable set to the empty string changes nothing;
* a value in backticks (```11434```): the variable set to that value changes nothing;
* a variable in backticks (```OLLAMA_MAX_QUEUE```): it is the default when it is set;
* a formula in backticks over other variables (```4 * OLLAMA_NUM_PARALLEL```; the README writes
  a multiplication sign for ``*``): for a few values of those variables, setting the variable to
  the formula's result changes nothing.

Alternatives, each in its own backticks (``OLLAMA_MAX_QUEUE`` or ``512``), are each checked; a
plain value with nothing else set.

"Changes nothing" means :func:`load_settings` gives the same :class:`Settings` as without it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG = ROOT / "proxy" / "config.py"

_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_TICKED = re.compile(r"`([^`]+)`")
_SAMPLES = (1, 3)
_TIMES = "\N{MULTIPLICATION SIGN}"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def config_table() -> list[tuple[list[str], str, str]]:
    """``(variables, default cell, whole row)`` for each row of the configuration table."""
    lines = [line for line in _section("Configuration").splitlines() if line.startswith("|")]
    assert lines, "README: no table in the Configuration section"
    assert _cells(lines[0])[:2] == ["variable", "default"], lines[0]
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        variables = [name for span in _TICKED.findall(cells[0]) for name in _NAME.findall(span)]
        assert variables, f"README: a configuration row names no variable: {line}"
        rows.append((variables, cells[1], line))
    return rows


def variables_read() -> set[str]:
    """Every variable ``load_settings`` reads: the upper-case names its calls start with."""
    tree = ast.parse(CONFIG.read_text())
    function = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "load_settings"
    )
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _NAME.fullmatch(first.value)
            ):
                names.add(first.value)
    assert names, "found no variable read in load_settings: has its style changed?"
    return names


def _documented_defaults() -> list[tuple[str, str, str]]:
    """``(variable, its default's text, row)`` for every variable of the table."""
    result = []
    for variables, cell, line in config_table():
        parts = cell.split(" / ") if len(variables) > 1 else [cell]
        assert len(parts) == len(variables), f"README: one default per variable: {line}"
        result += [(name, part.strip(), line) for name, part in zip(variables, parts, strict=True)]
    return result


def _evaluate(formula: str, values: dict[str, int]) -> float:
    """The value of an arithmetic ``formula`` (a multiplication sign or ``*``) over variables."""
    tree = ast.parse(formula.replace(_TIMES, "*"), mode="eval")

    def value(node: ast.expr) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            operations = {ast.Mult: left * right, ast.Add: left + right, ast.Sub: left - right}
            if type(node.op) in operations:
                return operations[type(node.op)]
        raise ValueError(f"not a formula this test reads: {formula!r}")

    return value(tree.body)


def _format(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _same_settings(variable: str, value: str, base: dict[str, str], line: str) -> None:
    try:
        documented = load_settings({**base, variable: value})
    except ConfigError as exc:
        pytest.fail(f"README: the documented default of {variable} is refused: {exc}\n{line}")
    assert documented == load_settings(base), (
        f"README: {variable}'s documented default {value!r} is not the code's "
        f"(with {base or 'nothing else set'})\n{line}"
    )


@pytest.mark.parametrize(
    ("variable", "default", "line"),
    [pytest.param(*row, id=row[0]) for row in _documented_defaults()],
)
def test_every_documented_default_is_the_codes(variable: str, default: str, line: str) -> None:
    if default.split()[0] in ("empty", "unset"):
        _same_settings(variable, "", {}, line)
        return
    alternatives = _TICKED.findall(default)  # "`OLLAMA_MAX_QUEUE` or `512`": each is checked
    assert alternatives, f"README: {variable}'s default {default!r}: values in backticks, or empty"
    for text in alternatives:
        others = [name for name in _NAME.findall(text) if name != variable]
        if not others:
            _same_settings(variable, text, {}, line)
            continue
        for sample in _SAMPLES:
            values = dict.fromkeys(others, sample)
            base = {name: str(number) for name, number in values.items()}
            _same_settings(variable, _format(_evaluate(text, values)), base, line)


def test_every_variable_the_code_reads_is_documented() -> None:
    table = "\n".join(line for _, _, line in config_table())
    mentioned = {name for span in _TICKED.findall(table) for name in _NAME.findall(span)}
    missing = sorted(variables_read() - mentioned)
    assert not missing, f"README: the Configuration table does not mention {', '.join(missing)}"


def test_every_variable_of_the_table_is_read() -> None:
    stale = sorted(
        {name for variables, _, _ in config_table() for name in variables} - variables_read()
    )
    assert not stale, f"README: the Configuration table lists {', '.join(stale)}, never read"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    quickstart = _section("Quickstart")
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", quickstart, re.S)
        for line in block.splitlines()
    ]
    checks = [command for command in commands if command.startswith("scripts/check.sh")]
    assert checks == ["scripts/check.sh"], commands
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[-1] == f"exec {checks[0]}"
    assert all(line.startswith(("set ", "cd ")) for line in lines[:-1]), lines


def test_every_script_and_module_the_readme_runs_exists() -> None:
    text = README.read_text()
    scripts = set(re.findall(r"\b(scripts/[\w.-]+\.sh)\b", text))
    assert scripts, "README names no script"
    for script in sorted(scripts):
        path = ROOT / script
        assert path.is_file(), f"README: {script} does not exist"
        assert path.stat().st_mode & 0o111, f"README: {script} is not executable"
    modules = set(re.findall(r"\.venv/bin/python -m ([\w.]+)", text))
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"README: no module {module}"
