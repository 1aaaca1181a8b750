"""The one exception type for bad user input.

Every `CPS4Error` message names the offending file or setting and says how to fix it. Console scripts print it
as a single line and exit with status 2 (see `nnunet_cps4.commands.cli.run_cli`); inside nnU-Net's own commands it is
raised as is, so the last line of the traceback is that message.
"""


class CPS4Error(Exception):
    """A dataset, file or setting the user controls is wrong; the message says which and how to fix it."""
