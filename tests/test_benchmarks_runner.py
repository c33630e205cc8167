"""``python -m benchmarks`` replaces only its generated blocks in docs/benchmarks.md."""

from __future__ import annotations

from benchmarks.__main__ import BENCHMARKS, DOCUMENT, replace_block


def test_replaces_its_block_and_keeps_the_rest():
    document = "# B\n\nintro\n<!-- generated: a -->\nold $1 \\1 table\n<!-- end: a -->\nafter\n"
    updated = replace_block(document, "a", "| new | $2 \\g<0> |\n")
    assert updated == "# B\n\nintro\n<!-- generated: a -->\n| new | $2 \\g<0> |\n<!-- end: a -->\nafter\n"
    assert replace_block(updated, "a", "| new | $2 \\g<0> |") == updated  # idempotent


def test_appends_a_missing_block():
    updated = replace_block("# B\n", "b", "table")
    assert updated == "# B\n\n### b\n\n<!-- generated: b -->\ntable\n<!-- end: b -->\n"


def test_every_cpu_benchmark_has_its_block_in_the_document():
    text = DOCUMENT.read_text()
    for benchmark in BENCHMARKS:
        assert f"<!-- generated: {benchmark.name} -->" in text and f"<!-- end: {benchmark.name} -->" in text
