"""Shared plumbing for the console scripts: one-line errors and exit codes."""
import sys
from typing import Callable, Optional, Sequence

from nnunet_cps4.errors import CPS4Error


def run_cli(main: Callable[[Optional[Sequence[str]]], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run a console-script body; a `CPS4Error` becomes `error: <message>` on stderr and exit status 2."""
    try:
        main(argv)
    except CPS4Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
