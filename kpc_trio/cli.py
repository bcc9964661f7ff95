"""The `kpc-trio` command: `run`, `check-config`, `demo`.

Startup problems (bad configuration, unreadable TLS files, license) end the process with a one-line
message naming the key or file and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.resources
import os
import signal
import sys
from collections.abc import Sequence

import trio

from kpc_trio import __version__
from kpc_trio.config import (
    DEFAULTS_SOURCE,
    Config,
    ConfigError,
    load_config,
    render_effective_config,
)
from kpc_trio.license import (
    DEFAULT_PATH,
    PASSWORD_ENV,
    PATH_ENV,
    LicenseError,
    LicenseInfo,
    load_license,
)
from kpc_trio.logs import configure_logging, get_logger
from kpc_trio.nats.embedded import NatsServerNotFoundError, NatsServerStartError
from kpc_trio.net import TlsConfigError

log = get_logger("kpc_trio")

EXIT_STARTUP_ERROR = 2


#: Problems the operator must fix before the service can start: reported in one line, exit 2.
STARTUP_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, TlsConfigError, LicenseError, NatsServerNotFoundError, NatsServerStartError,
    OSError,  # e.g. a listener port already in use
)


def _startup_problem(exc: BaseException) -> Exception | None:
    """The startup error inside `exc` (trio nurseries wrap errors in groups), if it is one."""
    if isinstance(exc, STARTUP_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_problem(inner)
            if found is not None:
                return found
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpc-trio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kpc-trio {__version__}")
    parser.add_argument("--config", help="YAML configuration file (default: $APP_CONFIG_PATH, "
                        "then /srv/kpc/service-config.yml)")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the service (the default)")
    run.add_argument("--workers", type=_positive, default=1,
                     help="service processes sharing the ports (SO_REUSEPORT), each a replica "
                          "(default 1: no supervisor process)")
    # Set by the supervisor for its children: which worker this is (the listeners share ports).
    run.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
    commands.add_parser("check-config", help="print the effective configuration and exit")
    demo = commands.add_parser("demo", help="run KPC with embedded NATS and a simulated Kaa side")
    demo.add_argument("--push-interval", type=float, default=30.0,
                      help="seconds between demo command pushes to connected endpoints")
    demo.add_argument("--tekton", action="store_true",
                      help="take the applications from a simulated Tekton and Keycloak")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        config = load_config(_config_path(args, command))
        if command == "check-config":
            sys.stdout.write(render_effective_config(config))
            return 0
        configure_logging(config.logging.level, config.logging.format,
                          config.logging.max_value_length)
        if command == "demo":
            from kpc_trio.demo import run_demo  # the simulator is only imported when asked for

            trio.run(functools.partial(run_demo, config, args.push_interval,
                                       tekton=args.tekton))
        elif getattr(args, "workers", 1) > 1 and args.worker_slot is None:
            from kpc_trio.workers import run_workers

            return trio.run(run_workers, config, _config_path(args, command), args.workers)
        else:
            trio.run(run_service, config, getattr(args, "worker_slot", None) is not None)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        problem = _startup_problem(exc)
        if problem is None:
            raise
        prefix = "invalid configuration" if command == "check-config" else "cannot start"
        sys.stderr.write(f"kpc-trio: {prefix}: {problem}\n")
        return EXIT_STARTUP_ERROR
    return 0


def _config_path(args: argparse.Namespace, command: str) -> str | None:
    """The demo brings its own applications unless the user names a configuration."""
    if command == "demo" and args.config is None and "APP_CONFIG_PATH" not in os.environ:
        return str(importlib.resources.files("kpc_trio") / "demo.yml")
    return args.config


def check_license(config: Config) -> LicenseInfo | None:
    """Validate the license certificate (KAA_LICENSE_CERT_PATH); raises LicenseError."""
    info = load_license(os.environ.get(PATH_ENV), os.environ.get(PASSWORD_ENV),
                        required=config.license.required)
    if info is None:
        log.warning("license_missing", path=os.environ.get(PATH_ENV, DEFAULT_PATH),
                    hint="running without a license certificate")
    else:
        log.info("license_loaded", subject=info.subject, not_after=info.not_after.isoformat(),
                 days_left=int(info.seconds_until_expiry() // 86400))
    return info


def _freeze_startup_heap() -> None:
    """Keep what startup built (modules, config, metrics: it lives as long as the process) out of
    the cyclic collector's way: otherwise each full collection walks all of it, a 15 ms pause
    in the middle of device round trips (measured)."""
    gc.collect()
    gc.freeze()


async def run_service(config: Config, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; a second signal forces the exit. `reuse_port`: one of
    several workers sharing the listening ports."""
    from kpc_trio.reload import ConfigReloader
    from kpc_trio.service import KpcService

    service = KpcService(config, reuse_port=reuse_port)
    license_info = check_license(config)
    if license_info is not None:
        service.metrics.track_license(license_info)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop_watching() -> None:
                async with trio.open_nursery() as serving:

                    async def serve(task_status: trio.TaskStatus[object]) -> None:
                        await service.serve(task_status=task_status)
                        serving.cancel_scope.cancel()  # the reloader ends with the service

                    if config.source != DEFAULTS_SOURCE:
                        # SIGHUP and file changes reload; from the start, since a SIGHUP that
                        # arrives while Tekton is first loaded must not end the process.
                        await serving.start(ConfigReloader(
                            service, config.source, service.metrics,
                            tls_context=service.tls_context).serve)
                    await serving.start(serve)
                    _freeze_startup_heap()
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve_then_stop_watching)
            async for signum in signals:
                if service.shutdown_started:
                    log.warning("forced_exit", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
                log.info("signal_received", signal=signal.Signals(signum).name, pid=os.getpid())
                service.request_shutdown()
