"""Replace the rows of one case family in a results file (DESIGN.md format) with rows re-measured in a later run,
e.g. the decode rows of kernels-h200 from `python -m evaluation.bench_kernels_attention --only decode --json F`:

    python scripts/merge_result_rows.py evaluation/results/kernels-h200.json F --prefix decode/ \
        --command-note "decode rows (decode/*) re-measured <when, which call and commit, the command>"

Every row of the results file whose case starts with --prefix is dropped and the new file's rows with that prefix
take their place (at the first dropped row's position, so the markdown keeps its order); the other rows and the
meta stay as they are, except that the note is appended to meta.command (so the file says where each part came
from). The markdown beside the JSON is rewritten from it (header, table) and its "## Notes" section kept; run
scripts/kernel_notes.py afterwards to recompute the notes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.results_io import markdown_table  # noqa: E402


def merge(results: dict, new_rows: list[dict], prefix: str) -> dict:
    fresh = [r for r in new_rows if r["case"].startswith(prefix)]
    if not fresh:
        raise SystemExit(f"no row of the new file has a case starting with {prefix!r}")
    rows = results["rows"]
    at = next((i for i, r in enumerate(rows) if r["case"].startswith(prefix)), len(rows))  # rows[:at] all stay
    kept = [r for r in rows if not r["case"].startswith(prefix)]
    return {**results, "rows": kept[:at] + fresh + kept[at:]}


def write_markdown(md_path: Path, results: dict) -> None:
    meta = results["meta"]
    old = md_path.read_text(encoding="utf-8") if md_path.exists() else ""
    notes = old[old.index("\n## Notes") :] if "\n## Notes" in old else ""
    # The existing title line stays; a new file gets write_results' form of it.
    title = old.splitlines()[0] if md_path.exists() else f"# {md_path.stem.rsplit('-', 1)[0]} on {meta.get('gpu')}"
    header = [title, ""]
    header += [f"- {k}: `{v}`" for k, v in meta.items() if v is not None]
    md_path.write_text("\n".join([*header, "", markdown_table(results["rows"]), ""]) + notes, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results JSON to update (its .md beside it is rewritten)")
    parser.add_argument("new", type=Path, help="a JSON list of rows, or a results file with 'rows'")
    parser.add_argument("--prefix", required=True, help="case prefix of the rows to replace, e.g. decode/")
    parser.add_argument("--command-note", required=True, help="appended to meta.command: where the new rows came from")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    new = json.loads(args.new.read_text(encoding="utf-8"))
    merged = merge(results, new["rows"] if isinstance(new, dict) else new, args.prefix)
    merged["meta"] = {**merged["meta"], "command": f"{merged['meta'].get('command', '')} ; {args.command_note}"}
    args.results.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    write_markdown(args.results.with_suffix(".md"), merged)
    print(f"{args.results}: {sum(r['case'].startswith(args.prefix) for r in merged['rows'])} rows under {args.prefix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
