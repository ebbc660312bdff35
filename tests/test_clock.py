"""One clock (docs/ARCHITECTURE.md, model/contracts/clock.py): every product module stamps time with
``utcnow()``, so no record gets a naive or local time, and reads a naive datetime as UTC with ``as_utc()``."""

import ast
from datetime import datetime, timedelta, timezone
from pathlib import Path

from model.contracts.clock import as_utc, utcnow

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("flows", "beam_jobs", "model", "bench")
CLOCK = ROOT / "model" / "contracts" / "clock.py"


def clock_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read the clock themselves: ``datetime.now(...)``, ``datetime.utcnow()``, ``datetime.today()``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("now", "utcnow", "today")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "datetime"):
            lines.append(node.lineno)
    return lines


def test_only_the_clock_module_reads_the_clock():
    found = {str(path.relative_to(ROOT)): lines for top in PRODUCT for path in sorted((ROOT / top).rglob("*.py"))
             if path != CLOCK and (lines := clock_reads(path))}
    assert not found, f"stamp time with model.contracts.clock.utcnow() instead: {found}"


def test_utcnow_and_as_utc_are_aware_utc():
    assert utcnow().utcoffset() == timedelta(0)
    assert as_utc(None) is None
    assert as_utc(datetime(2024, 5, 1, 10)) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    plus_two = datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two) == plus_two and as_utc(plus_two).utcoffset() == timedelta(0)
