"""``python -m bundle {schema,check}``: regenerate the manifest JSON schema or verify a bundle folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bundle.loader import BundleError, load_bundle
from bundle.manifest import manifest_json_schema

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


def render_schema() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bundle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the manifest JSON schema, or write it with --write")
    schema.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_PATH.name}")
    check = commands.add_parser("check", help="load a bundle and verify every file's sha256")
    check.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)

    if args.command == "schema":
        if args.write:
            SCHEMA_PATH.write_text(render_schema(), encoding="utf-8")
        else:
            sys.stdout.write(render_schema())
        return 0
    try:
        loaded = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = loaded.manifest
    print(f"ok: {loaded.root} model_version={manifest.model_version} domains={len(manifest.domains)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
