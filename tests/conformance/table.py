"""The statement table of docs/conformance.md, generated from the statements and the vectors."""

from __future__ import annotations

from collections import Counter

from tests.conformance.statements import KPC_RULES, STATEMENTS, Verdict
from tests.conformance.steps import TRANSPORTS
from tests.conformance.vectors import VECTORS


def _vector_names(statement_id: str) -> str:
    names = []
    for vector in VECTORS:
        if statement_id in vector.statements:
            only = "" if vector.transports == TRANSPORTS else f" ({'/'.join(vector.transports)})"
            names.append(f"`{vector.name}`{only}")
    return ", ".join(names)


def conformance_table() -> str:
    """Markdown: the counts, one row per MQTT 3.1.1 statement, then KPC's own rules."""
    verdicts = Counter(statement.verdict for statement in STATEMENTS)
    lines = [
        f"{len(STATEMENTS)} normative statements; {len(VECTORS)} vectors, each run over TCP and "
        "WebSocket unless marked.",
        "",
        f"- **pass**: {verdicts[Verdict.PASS]} statements that bind the server and apply to KPC "
        "(all of them pass)",
        f"- **client**: {verdicts[Verdict.CLIENT]} statements that bind the client only (vectors "
        "listed where KPC checks them anyway)",
        f"- **n/a**: {verdicts[Verdict.NOT_APPLICABLE]} statements about what KPC is not or does "
        "not do",
        f"- **deviation**: {verdicts[Verdict.DEVIATION]} statements KPC departs from on purpose",
        "",
        "| Statement | Summary | Result | Vectors | Note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for statement in STATEMENTS:
        tests = ", ".join([_vector_names(statement.id), *statement.tests]).strip(", ")
        lines.append(f"| [{statement.id}] | {statement.summary} | {statement.verdict.value} | "
                     f"{tests} | {statement.note} |")
    lines += ["", "KPC's own rules (issues 12 and 18), all passing:", "",
              "| Rule | What KPC does | Vectors |", "| --- | --- | --- |"]
    for rule, text in KPC_RULES.items():
        lines.append(f"| {rule} | {text} | {_vector_names(rule)} |")
    return "\n".join(lines) + "\n"
