"""Command line entry point (filled in by the server work)."""


def main() -> None:
    raise SystemExit("tidelog: not built yet")
