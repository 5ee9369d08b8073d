"""`acerl`: one command for every part of the system.

    acerl run [--recipe R] [--dry-run] [key=value ...]    train on this node (launch/all.sh)
    acerl judge serve|check [key=value ...]             the judge (launch/judge.sh)
    acerl generator [key=value ...]                     one more generator (launch/generator.sh)
    acerl learner run|train|demo [key=value ...]        the learner alone
    acerl eval --model DIR --prompts FILE [--k K] ...     score a model alone: per prompt, pass@k
    acerl data convert|dedup|decontaminate|passrate|select ...   prepare prompt sets (docs/data.md)

Every part reads its settings the same way: defaults, then --config FILE (YAML), then dotted
key=value overrides; `acerl PART --help` lists the fields.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Main = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    from launch.supervisor import main

    return main(argv)


def _judge(argv: list[str]) -> int:
    from judge.__main__ import main

    return main(argv, prog="acerl judge")


def _generator(argv: list[str]) -> int:
    from generator.__main__ import main

    return main(argv, prog="acerl generator")


def _learner(argv: list[str]) -> int:
    from learner.__main__ import main

    return main(argv)


def _eval(argv: list[str]) -> int:
    from launch.evaluate import main

    return main(argv)


def _data(argv: list[str]) -> int:
    if argv[:1] == ["passrate"]:  # sampled through the generators and the judge, as `acerl eval`
        from launch.evaluate import passrate_main

        return passrate_main(argv[1:])
    from dataprep.__main__ import main

    return main(argv, prog="acerl data")


COMMANDS: dict[str, tuple[Main, str]] = {
    "run": (_run, "train on this node: judge, generators and learner, supervised"),
    "judge": (_judge, "the verification service: serve, or check JSON Lines"),
    "generator": (_generator, "a rollout worker around vLLM, for a running training"),
    "learner": (_learner, "the learner alone: run (with the dispatcher), train (from a file), demo"),
    "eval": (_eval, "score a model on a prompt set: per-prompt results, avg@k and pass@k"),
    "data": (_data, "prepare prompt sets: convert, dedup, decontaminate, passrate, select"),
}


def usage() -> str:
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"acerl: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return command[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
