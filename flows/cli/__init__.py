"""The ``memrestore`` command line: the same flows as the Prefect UI, from a terminal.

Exit status: 0 success, 1 refused or failed (one message on stderr, no traceback), 2 usage error.

This module is the app and its wiring; the commands live by subject:

- flows/cli/restore.py: ``snapshots``, ``restore``, ``verify``, ``abort``, ``demo``;
- flows/cli/drill.py: ``drill``;
- flows/cli/sample_verify.py: ``sample-verify``;
- flows/cli/server.py: ``serve`` and ``server status|start|stop``;
- flows/cli/common.py: the consoles, the shared options, errors as one message;
- flows/cli/run_flow.py: Prefect set up and connected before it is imported, flows run;
- flows/cli/progress.py: the progress bar.

Prefect is imported only by a command that runs a flow, once :func:`run_flow.connect_prefect`
has pointed it at an API: ``--help`` and ``snapshots`` never load it. That is why the modules of
this package import Prefect, the flows and flows/ops/ inside the commands that use them, never at
their top.
"""

from __future__ import annotations

import typer

from memrestore.flows.cli import drill, restore, sample_verify, server

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Restore agent-memory snapshots (SQLite + HNSW) from a local folder or S3.",
    pretty_exceptions_enable=False,
)
# In this order in --help.
for command in (restore.snapshots, restore.restore, restore.verify, restore.abort, restore.demo,
                server.serve, drill.drill):
    app.command()(command)
app.command("sample-verify")(sample_verify.sample_verify)

server_app = typer.Typer(
    no_args_is_help=True,
    help="The shared local Prefect server that commands use when no PREFECT_API_URL is set up.",
)
app.add_typer(server_app, name="server")
server_app.command("status")(server.server_status)
server_app.command("start")(server.server_start)
server_app.command("stop")(server.server_stop)


def main() -> None:
    app()

