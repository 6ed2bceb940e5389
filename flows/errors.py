"""Errors of the Prefect side (flows/ops/): the local server, ``serve``, the fleet. Drawn with every
other error in tasks/errors.py's tree."""

from __future__ import annotations

from memrestore.backends.errors import RestoreError


class LocalServerError(RestoreError):
    """The local Prefect server could not be started, reached or stopped."""


class FleetError(RestoreError):
    """A fleet drill cannot fan out: the deployment it names is not there."""


class ServeError(RestoreError):
    """``serve`` could not start: no Prefect API to serve to."""
