"""benchmarks/gpu_acceptance.py --smoke: the prepared GPU run, on tiny photos on the CPU, so that it cannot rot
between the rare GPU loans. Run as on the lent machines: a first call where pycolmap cannot be imported (they have
none), a second that continues from the first's report and handoff.tar, then the docs block rendered from the
merged report. Figures are not compared with goals; what the run itself controls is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_acceptance import BLOCK, COLMAP_SECTIONS, MAIN_SECTIONS
from tests.import_blocker import blocking_environment

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"


def run(arguments: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory, shared):
    folder = tmp_path_factory.mktemp("gpu_acceptance")
    first = run(["--smoke", "--output", str(folder / "first")],
                blocking_environment(folder / "no_pycolmap", ("pycolmap",)))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(["--smoke", "--output", str(folder / "second"), "--previous", str(folder / "first")])
    assert second.returncode == 0, second.stderr[-3000:]
    return folder, json.loads((folder / "first" / "report.json").read_text()), \
        json.loads((folder / "second" / "report.json").read_text())


def test_the_first_call_runs_what_needs_no_pycolmap_and_hands_over(two_calls):
    folder, first, _ = two_calls
    sections = first["sections"]
    assert sections["environment"]["figures"]["pycolmap"] is None
    assert [sections[name]["status"] for name in MAIN_SECTIONS] == ["ok"] * len(MAIN_SECTIONS), sections
    for name in COLMAP_SECTIONS:
        assert sections[name]["status"] == "skipped" and "pycolmap" in sections[name]["why"]
    assert (folder / "first" / "handoff.tar").is_file()


def test_the_second_call_completes_the_report(two_calls):
    _, first, second = two_calls
    sections = second["sections"]
    for name in MAIN_SECTIONS[1:]:  # carried over from the first call, not run again
        assert sections[name] == first["sections"][name]
    assert sections["reconstruction"]["status"] == "ok" and sections["refinement"]["status"] == "ok", sections
    assert sections["dense"]["status"] == "skipped" and "CUDA" in sections["dense"]["why"]  # the CPU pycolmap
    assert any(name.startswith("environment (") for name in sections)  # both calls' machines are on record

    figures = {name: entry["figures"] for name, entry in sections.items()}
    assert figures["parity"]["holds"] and figures["parity"]["rows"]  # the test's own criteria, on this CPU
    assert [(r["pyramid"], r["precision"]) for r in figures["throughput"]["rows"]] == [("SS", "fp32"), ("MS", "fp32")]
    assert all(r["images_per_second"] > 0 and r["photos"] == 3 for r in figures["throughput"]["rows"])
    moved = {r["pyramid"]: r["moved"] for r in figures["precision"]["rows"]}
    assert moved == {"SS": [1.0, 1.0]}  # the smoke's one pyramid, fp32 against itself: nothing moves
    assert figures["matching"]["same"]
    assert figures["ray"]["photos"] == 2 and figures["ray"]["min_keypoint_share"] >= 0.9
    registered = {r["pyramid"]: r["registered_per_seed"] for r in figures["reconstruction"]["rows"]}
    assert registered == {"SS": [6]}  # the synthetic scene's six views, one seed
    refinement = figures["refinement"]
    assert refinement["keypoints_in_tracks"] > 0 and refinement["share_of_extraction"] > 0


def test_the_docs_block_is_rendered_from_the_report(two_calls, tmp_path):
    folder, _, second = two_calls
    document = tmp_path / "benchmarks.md"
    document.write_text("# Benchmarks\n\nkept\n")
    result = run(["--render", str(folder / "second" / "report.json"), "--document", str(document)])
    assert result.returncode == 0, result.stderr
    text = document.read_text()
    assert "kept" in text and f"<!-- generated: {BLOCK} -->" in text
    assert "| reconstruction | ok |" in text and "| dense | skipped |" in text
    assert text.count(f"<!-- generated: {BLOCK} -->") == 1
    run(["--render", str(folder / "second" / "report.json"), "--document", str(document)])
    assert document.read_text() == text  # rendering again replaces the block


def test_render_refuses_a_missing_report(tmp_path):
    result = run(["--render", str(tmp_path / "nothing.json")])
    assert result.returncode == 2 and "nothing.json" in result.stderr and "report.json" in result.stderr


def test_a_child_command_past_the_limit_is_cut_and_said(tmp_path, shared):
    """A lent machine's call is killed whole at its timeout; --limit ends the child commands first, so the report
    keeps what was measured and says what was cut (a 1-second limit: no extract command starts up that fast)."""
    result = run(["--smoke", "--output", str(tmp_path), "--sections", "throughput", "--limit", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((tmp_path / "report.json").read_text())["sections"]["throughput"]
    assert entry["status"] == "partial" and "SS fp32" in entry["why"] and "--limit" in entry["why"], entry
    assert entry["figures"]["rows"] == []
