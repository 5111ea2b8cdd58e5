"""`prefect-dockerparallel`: clusters ls / cleanup / logs, and the container entrypoints.

Cloud drivers are imported only for the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .providers.base import Provider

DRIVER_MODULES = {
    "local": "prefect_dockerparallel.providers.local",
    "docker": "prefect_dockerparallel.providers.docker.driver",
    "ecs": "prefect_dockerparallel.providers.ecs.driver",
    "aks": "prefect_dockerparallel.providers.kubernetes.driver",
}


def driver_for(kind: str, block: str | None = None) -> Provider:
    """A provider driver from a saved provider block, or from the environment's defaults."""
    if kind not in DRIVER_MODULES:
        raise SystemExit(f"--provider {kind!r} is unknown: choose one of {sorted(DRIVER_MODULES)}")
    if block:
        from . import blocks

        cls = {"local": blocks.LocalProvider, "docker": blocks.DockerProvider, "ecs": blocks.ECSFargateProvider,
               "aks": blocks.AKSProvider}[kind]
        return cls.load(block).build_provider()
    return importlib.import_module(DRIVER_MODULES[kind]).from_env()


def _clusters(args: argparse.Namespace) -> int:
    driver = driver_for(args.provider, args.block)
    records = driver.list_clusters()
    if args.action == "ls":
        if not records:
            print("no clusters found")
        for r in records:
            state = "alive" if r.alive else "dead"
            print(f"{r.name}\t{r.provider}\t{state}\tflow_run={r.flow_run_id or '-'}\t{len(r.resources)} resources")
        return 0
    targets = [r for r in records if (args.name and r.name == args.name) or (not args.name and not r.alive)]
    if args.name and not targets:
        print(f"no cluster named {args.name!r} found", file=sys.stderr)
        return 1
    for r in targets:
        removed = driver.cleanup(r.name)
        print(f"removed {len(removed)} resources of {r.name}")
        for item in removed:
            print(f"  {item}")
    if not targets:
        print("nothing to clean up")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .specs import ClusterSpec

    print(driver_for(args.provider, args.block).logs(ClusterSpec(name=args.name), tail=args.tail))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefect-dockerparallel")
    sub = parser.add_subparsers(dest="command", required=True)

    clusters = sub.add_parser("clusters", help="list or clean up clusters found by their tags")
    clusters.add_argument("action", choices=["ls", "cleanup"])
    clusters.add_argument("--provider", default="local", choices=sorted(DRIVER_MODULES))
    clusters.add_argument("--block", help="name of a saved provider block to take settings from")
    clusters.add_argument("--name", help="cleanup: this cluster only (default: every dead cluster)")
    clusters.set_defaults(func=_clusters)

    logs = sub.add_parser("logs", help="print a cluster's server and worker logs")
    logs.add_argument("name")
    logs.add_argument("--provider", default="local", choices=sorted(DRIVER_MODULES))
    logs.add_argument("--block")
    logs.add_argument("--tail", type=int, default=200)
    logs.set_defaults(func=_logs)

    sub.add_parser("worker", help="run a worker (container entrypoint)")
    sub.add_parser("server", help="run redis-server under the watchdog (container entrypoint)")

    args, _ = parser.parse_known_args(argv)
    if args.command == "worker":
        from .container.worker import main as worker_main

        return worker_main()
    if args.command == "server":
        from .container.server import main as server_main

        return server_main()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
