"""Join a plain and an accelerated run of transformers' tests: counts per family, and what acceleration broke.

Inputs per family: the plain run's JUnit XML, the accelerated run's JUnit XML and the plugin's JSON summary.
Output: result rows in the project's format (evaluation/results_io.py), with extra keys on the per-test rows.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# (category, pattern for the test name, pattern for the first error line); first match wins, so the specific
# error patterns come before the broad name patterns. The buckets are issue 30's; "other" needs a look.
SKIP_CATEGORY = "signature / skip differences"
CATEGORIES: list[tuple[str, str | None, str]] = [
    ("logging under fullgraph compile", None, r"Unsupported.*(log|warn|Logger)|(log|warn|Logger).*Unsupported"),
    (
        "tests inspecting internals",
        r"sdpa_can_dispatch|attn_implementation|cache_class|past_key_values_format",
        r"_attn_implementation|'eet' != '(sdpa|eager)'|DynamicCache|isinstance",
    ),
    ("static/compiled generate", r"static_cache|compil", r"SeqBounds"),
    ("attention weights lost / assisted decoding", r"assisted|prompt_lookup|attention", r"IndexError: tuple index"),
    (SKIP_CATEGORY, r"inputs_embeds|signature", r"signature"),
]


def categorize(test: str, error: str, skipped: bool = False) -> str:
    """The issue-30 bucket of a plain-pass / accelerated-fail (or -skip) test, from its name and first error line."""
    if skipped:
        return SKIP_CATEGORY
    name = test.rsplit("::", 1)[-1]
    for category, name_pattern, error_pattern in CATEGORIES:
        if re.search(error_pattern, error) or (name_pattern and re.search(name_pattern, name)):
            return category
    return "other"


@dataclass
class Outcome:
    status: str  # "passed", "failed" or "skipped"
    message: str = ""  # first line of the failure, error or skip reason
    where: str = ""  # the failing statement (the traceback's last '>' line), for a failure


def first_line(text: str | None, limit: int = 240) -> str:
    """The first non-blank line of `text`, cut to `limit` characters."""
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def failing_statement(traceback: str | None) -> str:
    """The last line pytest marks with '>' in a traceback: the statement that raised, in the deepest frame shown."""
    marked = [line[1:].strip() for line in (traceback or "").splitlines() if line.startswith(">")]
    return first_line(marked[-1]) if marked else ""


def read_junit(path: Path) -> dict[str, Outcome]:
    """`Class::test` -> outcome, from a pytest JUnit XML file. A failure or error in any phase counts as failed."""
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        owner = case.get("classname", "").rsplit(".", 1)[-1]  # the test class, or the module for a plain function
        test_id = case.get("name") if owner.startswith("test_") else f"{owner}::{case.get('name')}"
        bad = [child for child in case if child.tag in ("failure", "error")]
        skipped = case.find("skipped")
        if bad:
            child = bad[0]
            message = first_line(child.get("message")) or first_line(child.text)
            outcome = Outcome("failed", message, failing_statement(child.text))
        elif skipped is not None:
            outcome = Outcome("skipped", first_line(skipped.get("message")))
        else:
            outcome = Outcome("passed")
        if outcomes.get(test_id, Outcome("")).status != "failed":  # a teardown error may repeat the test case
            outcomes[test_id] = outcome
    return outcomes


def read_summary(path: Path) -> dict[str, dict]:
    """The plugin's per-test tallies keyed `Class::test` (the JUnit key), plus the totals under ''."""
    data = json.loads(path.read_text(encoding="utf-8"))
    tests = {nodeid.split("::", 1)[-1]: tally for nodeid, tally in data.pop("tests").items()}
    return {"": data, **tests}


def _ran(outcomes: dict[str, Outcome]) -> int:
    return sum(o.status != "skipped" for o in outcomes.values())


def _passed(outcomes: dict[str, Outcome]) -> int:
    return sum(o.status == "passed" for o in outcomes.values())


def family_rows(
    family: str, plain: dict[str, Outcome], eet: dict[str, Outcome], summary: dict[str, dict]
) -> list[dict]:
    """Count rows for one family, then one row per test that passes plain and fails (or skips) accelerated."""
    broken = sorted(t for t, o in eet.items() if o.status == "failed" and plain.get(t, Outcome("")).status == "passed")
    skipped = sorted(
        t for t, o in eet.items() if o.status == "skipped" and plain.get(t, Outcome("")).status == "passed"
    )
    fixed = sorted(t for t, o in eet.items() if o.status == "passed" and plain.get(t, Outcome("")).status == "failed")
    with_model = sum(1 for t, o in eet.items() if o.status != "skipped" and summary.get(t, {}).get("accelerated", 0))
    models = sum(v.get("accelerated", 0) for k, v in summary.items() if k)

    def count(engine: str, metric: str, value: int, unit: str = "tests") -> dict:
        return {"case": family, "engine": engine, "metric": metric, "value": value, "unit": unit}

    rows = [
        count("hf-sdpa", "tests_ran", _ran(plain)),
        count("hf-sdpa", "passed", _passed(plain)),
        count("eet", "tests_ran", _ran(eet)),
        count("eet", "passed", _passed(eet)),
        count("eet", "tests_with_accelerated_model", with_model),
        count("eet", "models_accelerated", models, "models"),
        count("eet", "plain_pass_accel_fail", len(broken)),
        count("eet", "plain_pass_accel_skip", len(skipped)),
        count("eet", "plain_fail_accel_pass", len(fixed)),
    ]
    for metric, tests in (("plain_pass_accel_fail", broken), ("plain_pass_accel_skip", skipped)):
        for test in tests:
            error, where = eet[test].message, eet[test].where
            category = categorize(test, f"{error} {where}", skipped=metric.endswith("skip"))
            rows.append(
                {
                    "case": f"{family}/{test}",
                    "engine": "eet",
                    "metric": metric,
                    "value": 1,
                    "unit": "test",
                    "category": category,
                    "error": error,
                    "where": where,
                    "models_accelerated": summary.get(test, {}).get("accelerated", 0),
                }
            )
    return rows


def total_rows(rows: list[dict]) -> list[dict]:
    """Sums of the per-family count rows, as case 'all'."""
    totals: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if "/" in row["case"]:
            continue
        key = (row["engine"], row["metric"], row["unit"])
        totals[key] = totals.get(key, 0) + row["value"]
    return [{"case": "all", "engine": e, "metric": m, "value": v, "unit": u} for (e, m, u), v in totals.items()]


def counts_table(rows: list[dict]) -> str:
    """A compact markdown table: one line per family, the counts side by side."""
    cols = [
        ("hf-sdpa", "tests_ran", "ran"),
        ("hf-sdpa", "passed", "passed plain"),
        ("eet", "passed", "passed accelerated"),
        ("eet", "tests_with_accelerated_model", "tests w/ accelerated model"),
        ("eet", "models_accelerated", "models accelerated"),
        ("eet", "plain_pass_accel_fail", "plain pass, accel fail"),
        ("eet", "plain_pass_accel_skip", "plain pass, accel skip"),
    ]
    cases = list(dict.fromkeys(r["case"] for r in rows if "/" not in r["case"]))
    value = {(r["case"], r["engine"], r["metric"]): r["value"] for r in rows}
    lines = ["| family | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(str(value.get((case, e, m), "")) for e, m, _ in cols) + " |")
    return "\n".join(lines)


def category_list(rows: list[dict]) -> str:
    """The plain-pass / accelerated-fail (and -skip) tests grouped by category, one line each."""
    per_test = [r for r in rows if "/" in r["case"]]
    out: list[str] = []
    for category in [*(c[0] for c in CATEGORIES), "other"]:
        members = [r for r in per_test if r["category"] == category]
        if not members:
            continue
        out += ["", f"### {category} ({len(members)})", ""]
        for r in members:
            kind = "skipped" if r["metric"].endswith("skip") else "failed"
            where = f" at `{r['where']}`" if r.get("where") else ""
            out.append(f"- `{r['case']}` ({kind}): {r['error']}{where}")
    return "\n".join(out)
