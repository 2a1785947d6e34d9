"""seg_bench.results: the Markdown tables it writes into docs/results.md come from results.json."""

from __future__ import annotations

import json

from seg_bench.results import REPO, markdown_tables, replace_marked


def test_tables_match_the_recorded_results():
    results = json.loads((REPO / "docs/results/results.json").read_text())
    shipped, ablation = markdown_tables(results)
    assert shipped.count("\n") == 1 + len(results["shipped"])
    assert ablation.count("\n") == 1 + len(results["ablation"])
    person = results["shipped"]["person"]
    assert f"| person | {100 * person['miou']:.2f} |" in shipped
    doc = (REPO / "docs/results.md").read_text()
    assert shipped in doc and ablation in doc, (
        "docs/results.md is out of date: run python -m seg_bench.results"
    )


def test_replace_marked_keeps_the_prose():
    text = "intro\n<!-- results:t -->\nold\n<!-- /results:t -->\noutro"
    assert replace_marked(text, "t", "new") == "intro\n<!-- results:t -->\nnew\n<!-- /results:t -->\noutro"
    assert replace_marked(text, "other", "new") == text
