"""The quality benchmark's runner: `ssm-offset compare --grid benches/quality/grid.toml` with any further
arguments passed on (e.g. `--workers 8 --max-minutes 7.5 --models mamba`). See ssm_offset/cli/grid.py."""
import sys
from pathlib import Path

if __name__ == "__main__":
    from ssm_offset.cli import main

    grid = str(Path(__file__).resolve().parent / "grid.toml")
    sys.exit(main(["compare", "--grid", grid, *sys.argv[1:]]))
