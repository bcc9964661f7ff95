"""The statement table is complete, consistent with the vectors, and what docs/conformance.md
shows."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conformance.statements import KPC_RULES, STATEMENTS, Verdict
from tests.conformance.table import conformance_table
from tests.conformance.vectors import VECTORS

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
REGENERATE = ("python -c \"from tests.conformance.table import conformance_table; "
              "print(conformance_table(), end='')\"")


def test_statement_ids_are_unique_and_every_vector_names_known_ones() -> None:
    ids = [statement.id for statement in STATEMENTS]
    assert len(ids) == len(set(ids))
    known = {*ids, *KPC_RULES}
    for vector in VECTORS:
        assert vector.statements, vector.name
        assert set(vector.statements) <= known, vector.name
    assert len({vector.name for vector in VECTORS}) == len(VECTORS)


def test_every_passing_statement_and_rule_has_a_test() -> None:
    tested = {statement_id for vector in VECTORS for statement_id in vector.statements}
    untested = [statement.id for statement in STATEMENTS
                if statement.verdict is Verdict.PASS and statement.id not in tested
                and not statement.tests]
    assert not untested
    assert set(KPC_RULES) <= tested


def test_deviations_and_non_applicable_statements_say_why() -> None:
    for statement in STATEMENTS:
        if statement.verdict in (Verdict.DEVIATION, Verdict.NOT_APPLICABLE):
            assert statement.note, statement.id


def test_the_document_shows_the_current_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- BEGIN conformance_table\(\) -->\n(.*)"
                      r"<!-- END conformance_table\(\) -->", text, re.DOTALL)
    assert match, f"{DOC} lost its conformance_table() markers"
    assert match[1] == conformance_table(), f"{DOC} is stale: paste the output of {REGENERATE}"
