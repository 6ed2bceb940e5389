"""The ``memrestore`` command line: the same flows as the Prefect UI, from a terminal.

Exit status: 0 success, 1 refused or failed (one message on stderr, no traceback), 2 usage error.

This module is the app and its wiring; the commands live by subject:

- flows/cli_restore.py: ``snapshots``, ``restore``, ``verify``, ``abort``, ``demo``;
- flows/cli_drill.py: ``drill``;
- flows/cli_server.py: ``serve`` and ``server status|start|stop``;
- flows/cli_common.py: the consoles, the shared options, errors as one message;
- flows/cli_flows.py: Prefect set up and connected before it is imported, flows run;
- flows/cli_progress.py: the progress bar.

Prefect is imported only by a command that runs a flow, once :func:`cli_flows.connect_prefect`
has pointed it at an API: ``--help`` and ``snapshots`` never load it.
"""

from __future__ import annotations

import typer

from memrestore.flows import cli_drill, cli_restore, cli_server
from memrestore.flows.cli_progress import _progress_bar  # noqa: F401 - tests drive the bar through here

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Restore agent-memory snapshots (SQLite + HNSW) from a local folder or S3.",
    pretty_exceptions_enable=False,
)
# In this order in --help.
for command in (cli_restore.snapshots, cli_restore.restore, cli_restore.verify, cli_restore.abort,
                cli_restore.demo, cli_server.serve, cli_drill.drill):
    app.command()(command)

server_app = typer.Typer(
    no_args_is_help=True,
    help="The shared local Prefect server that commands use when no PREFECT_API_URL is set up.",
)
app.add_typer(server_app, name="server")
server_app.command("status")(cli_server.server_status)
server_app.command("start")(cli_server.server_start)
server_app.command("stop")(cli_server.server_stop)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
