"""Print the support tables, or write them into a file: ``python -m adapters.support_matrix``.

    python -m adapters.support_matrix                    # print the tables
    python -m adapters.support_matrix --write README.md  # replace the tables between the markers
    python -m adapters.support_matrix --exclude-plugin adapters-example-plugin --write README.md

The tables are :func:`adapters.support.render_markdown` of :func:`adapters.supported_models`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .support import render_markdown, replace_between_markers, supported_models


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.support_matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="FILE", help="replace the tables between the markers in FILE")
    parser.add_argument(
        "--exclude-plugin",
        metavar="DIST",
        action="append",
        default=[],
        help="leave out the model types of this distribution (repeatable)",
    )
    args = parser.parse_args(argv)
    models = [model for model in supported_models() if model.plugin not in args.exclude_plugin]
    table = render_markdown(models)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_between_markers(path.read_text(encoding="utf-8"), table), encoding="utf-8")
        print(f"wrote the support matrix ({len(models)} model types) into {path}")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
