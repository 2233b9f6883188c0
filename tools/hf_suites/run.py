"""Run transformers' own model tests twice, plain and with every model accelerated by eet_hf, and compare.

    python tools/hf_suites/run.py --tests-dir /path/to/transformers            # all families, results committed
    python tools/hf_suites/run.py --tests-dir ... --families gpt2 -k greedy    # a cheap check

Run it with the Python whose transformers the tests belong to (the tests must match the installed version).
See tools/hf_suites/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAMILIES = ("gpt2", "bert", "llama", "mistral", "qwen2", "opt", "gpt_neox", "roberta")
SUITE = "hf-suites"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run transformers' model tests plain and with eet_hf.accelerate on every model; "
        "write evaluation/results/hf-suites-<device>.{json,md}.",
        epilog="Arguments after '--' go to both pytest runs unchanged.",
    )
    parser.add_argument(
        "--tests-dir",
        type=Path,
        required=True,
        help="a transformers checkout (or copy) holding tests/ and conftest.py, at the installed version",
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated model families (tests/models/<f>/test_modeling_<f>.py); default {','.join(FAMILIES)}",
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, applied to every family")
    parser.add_argument("--max-tests", type=int, help="run only the first N collected tests of each family")
    parser.add_argument(
        "--eet-src",
        type=Path,
        default=REPO,
        help="the eet_hf source tree the accelerated run imports (default: this checkout)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/eet_hf_suites"),
        help="logs, JUnit XML and plugin summaries (default /tmp/eet_hf_suites)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where hf-suites-<device>.{json,md} go; default evaluation/results for a full run, "
        "the work dir when -k or --max-tests picks a subset",
    )
    parser.add_argument(
        "--reuse-plain",
        action="store_true",
        help="reuse a plain run in the work dir made with the same selection (plain results do not "
        "depend on eet_hf), so a re-run after eet changes costs only the accelerated half",
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="per-test timeout in seconds (needs pytest-timeout; without it, none)"
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="let tests reach the Hugging Face Hub (default HF_HUB_OFFLINE=1: tests that download "
        "fail fast, in both runs alike)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the results from the runs already in the work dir",
    )
    parser.add_argument("--tests-label", help="where the tests came from, for the results' meta (default: git or path)")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (pytest arguments go after '--')")
    args.pytest_args = extra
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    return args


def _git(cwd: Path, *cmd: str) -> str:
    out = subprocess.run(["git", "-C", str(cwd), *cmd], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def eet_commit(eet_src: Path) -> str:
    """Short commit of the eet_hf tree, '+dirty' when it has uncommitted changes to tracked files."""
    commit = _git(eet_src, "rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if _git(eet_src, "status", "--porcelain", "--untracked-files=no") else "")


def prepare_tests_dir(tests_dir: Path) -> None:
    """Check the layout; a copied tests/ folder also needs src/transformers (pipeline tests import it by path)."""
    import transformers

    for needed in ("tests/test_modeling_common.py", "conftest.py"):
        if not (tests_dir / needed).is_file():
            raise SystemExit(
                f"run.py: {tests_dir / needed} not found; --tests-dir must hold transformers' tests/ and conftest.py"
            )
    src = tests_dir / "src" / "transformers"
    if not src.exists():
        src.parent.mkdir(exist_ok=True)
        src.symlink_to(Path(transformers.__file__).parent, target_is_directory=True)
        print(f"run.py: linked {src} -> the installed transformers {transformers.__version__}")


def test_file(tests_dir: Path, family: str) -> str:
    path = f"tests/models/{family}/test_modeling_{family}.py"
    if not (tests_dir / path).is_file():
        raise SystemExit(f"run.py: no {path} under {tests_dir}")
    return path


def select(args: argparse.Namespace, family: str) -> list[str]:
    """The pytest arguments that pick this family's tests: the file (and -k), or the first N collected node ids."""
    base = [test_file(args.tests_dir, family), *(["-k", args.keyword] if args.keyword else [])]
    if args.max_tests is None:
        return base
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", *base],
        cwd=args.tests_dir,
        capture_output=True,
        text=True,
    )
    ids = [line for line in out.stdout.splitlines() if line.startswith("tests/") and "::" in line]
    if not ids:
        raise SystemExit(f"run.py: collecting {family} found no tests:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids[: args.max_tests]


def run_pytest(args: argparse.Namespace, family: str, kind: str, selection: list[str]) -> Path:
    """One pytest run; returns its JUnit XML path. kind is 'plain' or 'eet'."""
    work = args.work_dir
    xml, log = work / f"{family}-{kind}.xml", work / f"{family}-{kind}.log"
    stamp = work / f"{family}-{kind}.run.json"
    key = {"selection": selection, "pytest_args": args.pytest_args, "timeout": args.timeout}
    if kind == "plain" and args.reuse_plain and xml.is_file() and read_stamp(stamp).get("key") == key:
        print(f"[{family}] plain: reusing {xml}")
        return xml
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={xml}", *args.pytest_args]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={args.timeout}")
    env = dict(os.environ)
    if not args.online:
        env["HF_HUB_OFFLINE"] = "1"
    if kind == "eet":
        cmd += ["-p", "eet_accelerate_plugin", f"--eet-summary={work / f'{family}-eet.json'}"]
        paths = [str(args.eet_src.resolve()), str(HERE), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    cmd += selection
    print(f"[{family}] {kind}: {len(selection)} selection args, log {log}", flush=True)
    with open(log, "w", encoding="utf-8") as out:
        returncode = subprocess.run(cmd, cwd=args.tests_dir, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    # 0: all passed, 1: some failed; anything else (interrupted, internal or usage error) is no result.
    if returncode not in (0, 1) or not xml.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"run.py: {family} {kind} run ended with pytest status {returncode}; {log} ends:\n{tail}")
    done = {"key": key, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if kind == "eet":
        done["eet_commit"] = eet_commit(args.eet_src)
    stamp.write_text(json.dumps(done, indent=1) + "\n", encoding="utf-8")
    return xml


def read_stamp(path: Path) -> dict:
    """What run_pytest recorded about a finished run ({} when there is none)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_eet_source(summary_path: Path, eet_src: Path) -> None:
    """The accelerated run must have imported eet_hf from --eet-src, not some installed copy."""
    imported = Path(json.loads(summary_path.read_text(encoding="utf-8"))["eet_hf"]).resolve()
    if not imported.is_relative_to(eet_src.resolve()):
        raise SystemExit(f"run.py: the accelerated run imported eet_hf from {imported}, not from {eet_src}")


def run_family(args: argparse.Namespace, family: str) -> list[dict]:
    import compare

    if args.report_only:
        xmls = [args.work_dir / f"{family}-{kind}.xml" for kind in ("plain", "eet")]
        missing = [str(x) for x in xmls if not x.is_file()]
        if missing:
            raise SystemExit(f"run.py: --report-only, but {', '.join(missing)} missing")
    else:
        selection = select(args, family)
        xmls = [run_pytest(args, family, kind, selection) for kind in ("plain", "eet")]
    plain, eet = (compare.read_junit(x) for x in xmls)
    summary_path = args.work_dir / f"{family}-eet.json"
    check_eet_source(summary_path, args.eet_src)
    rows = compare.family_rows(family, plain, eet, compare.read_summary(summary_path))
    print(compare.counts_table(rows), flush=True)
    return rows


def tests_label(args: argparse.Namespace) -> str:
    if args.tests_label:
        return args.tests_label
    commit = _git(args.tests_dir, "rev-parse", "--short", "HEAD")
    return f"{args.tests_dir}@{commit}" if commit else str(args.tests_dir)


def write(args: argparse.Namespace, rows: list[dict], argv: list[str]) -> Path:
    import compare

    sys.path.insert(0, str(REPO))
    from evaluation.results_io import write_results

    subset = args.keyword is not None or args.max_tests is not None
    results_dir = args.results_dir or (args.work_dir if subset else REPO / "evaluation" / "results")
    stamps = [read_stamp(args.work_dir / f"{family}-eet.run.json") for family in args.families]
    commits = ", ".join(sorted({s.get("eet_commit", "unknown") for s in stamps}))
    times = sorted(s.get("finished", "unknown") for s in stamps)
    finished = times[0] if times[0] == times[-1] else f"{times[0]} to {times[-1]}"
    command = (
        f"python tools/hf_suites/run.py {shlex.join(argv)} (eet_hf commit {commits}; accelerated runs finished "
        f"{finished}; tests: {tests_label(args)}; plain = HF as the tests configure it, sdpa by default)"
    )
    path = write_results(SUITE, rows, command, out_dir=results_dir)
    md = path.with_suffix(".md")
    md.write_text(
        md.read_text(encoding="utf-8")
        + "\n## Counts per family\n\n"
        + compare.counts_table(rows)
        + "\n"
        + "\n## Plain pass, accelerated fail or skip, by category\n"
        + compare.category_list(rows)
        + "\n",
        encoding="utf-8",
    )
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    import compare

    args.tests_dir = args.tests_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prepare_tests_dir(args.tests_dir)
    rows: list[dict] = []
    for family in args.families:
        rows += run_family(args, family)
    per_test = [r for r in rows if "/" in r["case"]]
    rows = compare.total_rows(rows) + [r for r in rows if "/" not in r["case"]] + per_test
    path = write(args, rows, argv)
    print(f"run.py: wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
