"""The two deployments, served by one long-lived process: ``memrestore serve``.

    restore-snapshot/on-demand   no schedule; run from the Prefect UI (a typed form) or
                                 `prefect deployment run 'restore-snapshot/on-demand' -p ...`
    restore-drill/nightly        a cron schedule (default 03:00 UTC) with the drill's parameters

They are served to the Prefect API in ``PREFECT_API_URL``. When that is unset, ``serve`` uses the
shared local Prefect server of this ``PREFECT_HOME`` (flows/ops/local_server.py: a full server on
loopback, with its UI and its scheduler, which the other commands use too), started if none runs:
Prefect's in-process ephemeral API has no scheduler, so a nightly schedule there would never fire.

Stopping ``serve`` leaves the nightly schedule active (``pause_on_shutdown=False``): runs keep being
scheduled and wait, Late, for the next ``serve`` or a worker, where Prefect's default would pause
the schedule and drills would silently stop. ``prefect.yaml`` at the repo root declares the same two
deployments for a process work pool (``prefect deploy --all``).

``memrestore serve`` imports this module before Prefect has an API to talk to: :func:`serve`
chooses it (the shared local server when none is set up), so Prefect, the flows and the rest of
flows/ops/ are imported inside the functions, once it is chosen.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from memrestore.flows.errors import ServeError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from memrestore.flows.ops.serve_stop import ServeStop
    from memrestore.tasks.validation import Validation

ON_DEMAND = "on-demand"
NIGHTLY = "nightly"
DEFAULT_DRILL_CRON = "0 3 * * *"
DRILL_TIMEZONE = "UTC"
#: The nightly schedule's slug: a restarted ``serve`` updates this schedule instead of adding one.
DRILL_SCHEDULE_SLUG = "nightly-drill"
TAGS = ["memrestore"]


def _validation_parameter(validation: Validation | None) -> dict:
    """The operator's validation as a deployment's parameter, when one is set."""
    return {"validation": validation.model_dump(mode="json")} if validation is not None and validation.active else {}


def on_demand_deployment(backend: str | None = None, validation: Validation | None = None) -> RunnerDeployment:
    """``restore-snapshot/on-demand``: no schedule; ``backend`` and ``validation``, when given,
    prefill the form (each run validates its staged copy with it, unless the form changes it)."""
    from prefect.types.entrypoint import EntrypointType

    from memrestore.flows.restore import restore_snapshot

    parameters = ({"backend": backend} if backend else {}) | _validation_parameter(validation)
    deployment = restore_snapshot.to_deployment(
        name=ON_DEMAND,
        parameters=parameters,
        tags=TAGS,
        description="Restore one tenant's snapshot into a data dir. Run -> Custom run fills the form.",
        # A module path, not a file path: the run loads the installed package from any directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    _fit_form(deployment._parameter_openapi_schema.model_dump(), parameters, deployment)
    return deployment


def _fit_form(schema: dict, given: dict, deployment: RunnerDeployment) -> None:
    """The UI's form for ``deployment`` (its parameter schema, which Prefect writes from the flow's
    signature), fitted to an operator:

    - a parameter the deployment gives (serve's ``--backend``) is prefilled and no longer
      required, so that the form asks only for what it must;
    - an optional parameter (``limit_rate: str | None = None``) is a plain input of its type: the
      flow's schema has ``anyOf: [string, null]`` with a null default, which the UI shows as a
      ``str | None`` switch to flip before a value can be typed; here it is the string alone, with
      no default (a null default on a string the UI refuses: "None is not of type 'string'").
      Left empty, it is not sent, and the flow's default (None) applies.

    ``prefect deploy`` (prefect.yaml) writes the flow's schema as it is: its form keeps the switch.
    """
    from prefect.utilities.callables import ParameterSchema

    schema["required"] = [name for name in schema.get("required", []) if name not in given]
    for name, prop in schema["properties"].items():
        branches = prop.get("anyOf", [])
        if prop.get("default", 0) is None and len(branches) == 2 and {"type": "null"} in branches:
            typed = next(b for b in branches if b != {"type": "null"})
            schema["properties"][name] = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")},
                                          **typed}
    deployment._parameter_openapi_schema = ParameterSchema(**schema)


def drill_parameters(
    backend: str,
    tenants: list[int] | None = None,
    max_age_hours: float | None = None,
    scratch_dir: str | None = None,
    keep_failed: bool = False,
    validation: Validation | None = None,
) -> dict:
    """The nightly drill's parameters; what is not given keeps the flow's default."""
    params: dict = {"backend": backend}
    if tenants:
        params["tenants"] = list(tenants)
    if max_age_hours is not None:
        params["max_age_hours"] = max_age_hours
    if scratch_dir is not None:
        params["scratch_dir"] = scratch_dir
    if keep_failed:
        params["keep_failed"] = True
    return params | _validation_parameter(validation)


def nightly_deployment(
    backend: str,
    cron: str = DEFAULT_DRILL_CRON,
    tenants: list[int] | None = None,
    max_age_hours: float | None = None,
    scratch_dir: str | None = None,
    keep_failed: bool = False,
    validation: Validation | None = None,
    coverage: dict | None = None,
) -> RunnerDeployment:
    """``restore-drill/nightly``: the drill of ``backend`` on ``cron`` (UTC); ``coverage``: its
    ``pick``, ``window_days``, ``seed`` and ``sample`` parameters, those given."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from memrestore.flows.drill import restore_drill

    return restore_drill.to_deployment(
        name=NIGHTLY,
        schedules=[Cron(cron, timezone=DRILL_TIMEZONE, slug=DRILL_SCHEDULE_SLUG)],
        parameters=drill_parameters(backend, tenants, max_age_hours, scratch_dir, keep_failed, validation)
        | (coverage or {}),
        tags=TAGS,
        description="Restore every tenant's latest snapshot into scratch, check it, report, clean up.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _check_reachable(api_url: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise ServeError(
            f"no Prefect API answers at PREFECT_API_URL={api_url} ({type(failure).__name__}: "
            f"{failure}). Start one (`prefect server start`), fix the URL, or unset it and serve "
            "starts a local server."
        )


@contextmanager
def prefect_api(log: Callable[[str], None]) -> Iterator[str]:
    """The API in ``PREFECT_API_URL``, or the shared local server of this ``PREFECT_HOME``
    (flows/ops/local_server.py: started if none runs, held while serving, stopped by itself once idle
    after ``serve`` ends)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from memrestore.flows.ops.local_server import ensure_server

    configured = PREFECT_API_URL.value()
    if configured:
        _check_reachable(configured)
        yield configured
        return
    info, started = ensure_server()
    log(f"{'started' if started else 'using'} the local Prefect server at {info.ui_url} "
        f"(log: {info.log}; `memrestore server stop` ends it)")
    # The environment too: the runner starts each flow run as a subprocess.
    os.environ["PREFECT_API_URL"] = info.api_url
    try:
        with temporary_settings({PREFECT_API_URL: info.api_url}):
            yield info.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def serve(
    backend: str | None = None,
    drill_cron: str = DEFAULT_DRILL_CRON,
    tenants: list[int] | None = None,
    max_age_hours: float | None = None,
    scratch_dir: str | None = None,
    keep_failed: bool = False,
    log: Callable[[str], None] = print,
    validation: Validation | None = None,
    coverage: dict | None = None,
) -> None:
    """Serve ``restore-snapshot/on-demand`` and, when ``backend`` is given, ``restore-drill/nightly``
    until interrupted (SIGINT or SIGTERM). The drill needs a backend: without one only the on-demand
    deployment is served (and a nightly schedule served earlier is left as it is). ``validation``,
    the operator's own, goes into both (the on-demand form's default, the drill's parameter); a
    hook that cannot run is refused before anything is served. ``coverage``: the drill's pick and
    sampled verify parameters (:func:`nightly_deployment`)."""
    from prefect.settings import PREFECT_UI_URL

    from memrestore.flows.ops.serve_stop import ServeStop
    from memrestore.tasks.validation import check_hook

    if validation is not None and validation.active:
        check_hook(validation)

    stopper: ServeStop | None = None
    if threading.current_thread() is threading.main_thread():
        # Until the runner serves, a signal unwinds this function (so a local server is let go).
        stopper = ServeStop("", log)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stopper.on_signal)
    with prefect_api(log) as api_url:
        from memrestore.flows.ops.alerts import ensure_crashed_restore_automation

        ensure_crashed_restore_automation(log)
        deployments = [on_demand_deployment(backend, validation)]
        if backend:
            deployments.append(nightly_deployment(
                backend, drill_cron, tenants, max_age_hours, scratch_dir, keep_failed, validation, coverage))
        if validation is not None and validation.active:
            log(f"every restore and drill validates its copy with {validation.describe()}, "
                f"{validation.timeout_seconds:g} s at most")
        for d in deployments:
            when = f"cron {drill_cron!r} ({DRILL_TIMEZONE})" if d.schedules else "on demand"
            log(f"serving {d.flow_name}/{d.name}: {when}")
        if not backend:
            log("no --backend: the nightly drill is not served (it needs a backend to drill)")
        if PREFECT_UI_URL.value():
            log(f"Prefect UI: {PREFECT_UI_URL.value()}/deployments")
        log("Ctrl-C (or SIGTERM) stops serving" + ("; the nightly schedule stays active" if backend else ""))
        _run(deployments, stopper, api_url)


def _run(deployments: list[RunnerDeployment], stopper: ServeStop | None, api_url: str) -> None:
    """What ``prefect.serve`` does, with our stop (flows/ops/serve_stop.py) in place of its own."""
    import asyncio

    from prefect.runner import Runner

    class _Runner(Runner):
        # Runner.start installs this as its SIGTERM handler: a signal goes to ServeStop, which
        # calls back here (without arguments) for Prefect's own stop.
        def handle_sigterm(self, *args, **kwargs):
            if stopper is None or args == ():  # called by ServeStop itself, or off the main thread
                return super().handle_sigterm()
            return stopper.on_signal(*args)

    # Stopping leaves the nightly schedule active: Prefect's default would pause it. No limit on
    # runs at once, as prefect.serve passes (the Runner's own default is 5).
    runner = _Runner(pause_on_shutdown=False, limit=None)
    for deployment in deployments:
        runner.add_deployment(deployment)
    if stopper is not None:
        stopper.api_url, stopper.runner = api_url, runner
    try:
        asyncio.run(runner.start())
    finally:
        if stopper is not None:
            stopper.finished.set()
