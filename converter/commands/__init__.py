"""One module per CLI subcommand; each exposes `run(argv) -> int` and raises ConvertError on bad input."""
