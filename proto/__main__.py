"""`python -m proto keygen --dir DIR --name NAME`: create a CURVE key pair for a component."""

from __future__ import annotations

import argparse
from pathlib import Path

from proto.curve import generate_keys


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m proto")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write NAME.key (public) and NAME.key_secret into DIR")
    keygen.add_argument("--dir", type=Path, required=True)
    keygen.add_argument("--name", required=True)
    args = parser.parse_args()
    public, secret = generate_keys(args.dir, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it on this machine only)")


if __name__ == "__main__":
    main()
