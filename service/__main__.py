"""``python -m service --bundle BUNDLE``: serve a bundle with uvicorn (one process owns the session)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from bundle.loader import BundleError
from service.app import create_app
from service.inference import load_engine
from service.logs import configure_logging
from service.server import build_server
from service.settings import Settings


def settings_help() -> str:
    """One line per setting: its environment variable, default and meaning."""
    lines = ["settings (environment variables; the options above override them):"]
    for name, field in Settings.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        about = f": {field.description}" if field.description else ""
        lines.append(f"  UNIMMAD_{name.upper()} ({default}){about}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a UniMMAD bundle. Every setting also reads UNIMMAD_<NAME> from the environment.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, help="bundle folder (UNIMMAD_BUNDLE)")
    parser.add_argument("--host", help="interface to bind (UNIMMAD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (UNIMMAD_PORT, default 8000)")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="UNIMMAD_LOG_LEVEL"
    )
    parser.add_argument("--log-format", choices=["json", "text"], help="UNIMMAD_LOG_FORMAT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        hint = " (pass --bundle or set UNIMMAD_BUNDLE)" if where == "bundle" else ""
        message = first["msg"].removeprefix("Value error, ")
        print(f"error: setting {where}: {message}{hint}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        engine = load_engine(settings)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger(__name__).info(
        "serving", extra={"bundle": str(settings.bundle), "host": settings.host, "port": settings.port}
    )
    fatal: list[str] = []

    def stop_serving(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    server = build_server(create_app(settings, engine=engine, on_fatal=stop_serving), settings)
    server.run()
    if fatal:
        print(f"error: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
