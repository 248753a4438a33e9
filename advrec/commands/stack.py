"""``advrec stack up|down|status|restart|reconcile|hash-key``: run the service stack on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advrec.stack.launcher import SERVICE_PORTS, Stack, StackConfig
from advrec_common.settings import get_settings


def _stack(args: argparse.Namespace) -> Stack:
    s = get_settings()
    home = Path(args.home) if args.home else s.home
    # the services listen next to the gateway (8000 -> 8001..8003), so two stacks differ by --port alone
    services = {svc: args.port + 1 + i for i, svc in enumerate(SERVICE_PORTS)}
    return Stack(StackConfig(home=home, port=args.port, redis_url=args.redis_url or s.redis_url,
                             services=not args.no_services, service_ports=services, device=s.device,
                             stack_id=s.stack_id, api_key_hashes=s.api_key_hashes or None))


def _print_status(status: dict) -> None:
    for name, info in status.items():
        state = info.get("state") or "running"
        shown = state if info["alive"] else f"DOWN ({state})"
        extra = f"  restarts {info['restarts']}" if info.get("restarts") else ""
        print(f"{name:<22} pid {str(info.get('pid') or '-'):<8} {shown}{extra}")


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    status = stack.up(timeout=args.timeout)
    _print_status(status)
    print(f"gateway  {stack.url}  (docs: {stack.url}/docs)")
    others = {ns: c for ns, c in stack.claims().items() if ns != stack.namespace}
    print(f"redis    {stack.config.redis_url}  namespace advrec:{stack.namespace}:"
          + (f"  (shared with {len(others)} other stack(s): " + ", ".join(c.get("home", "?") for c in others.values())
             + ")" if others else ""))
    if stack.config.api_key_hashes is None:
        print(f"api key  export ADVREC_API_KEY=$(cat {stack.dir / 'api-key'}) ADVREC_SERVER={stack.url}")
    return 0


def _restart(args: argparse.Namespace) -> int:
    pid = _stack(args).restart(args.name)
    print(f"{args.name} restarted (pid {pid})")
    return 0


def _down(args: argparse.Namespace) -> int:
    names = _stack(args).down()
    print(f"stopped {len(names)} process(es): {', '.join(names) or '-'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    if not status:
        print("no stack processes")
    _print_status(status)
    return 0 if status and all(i["alive"] for i in status.values()) else 1


def _reconcile(args: argparse.Namespace) -> int:
    s = get_settings()
    if args.home or args.redis_url:
        s = s.model_copy(update={k: v for k, v in (("home", Path(args.home) if args.home else None),
                                                    ("redis_url", args.redis_url)) if v is not None})
    print(json.dumps(Stack.reconcile_now(s)))
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from advrec_common.apikeys import hash_key

    print(hash_key(args.key))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="run the service stack locally (Redis, services, gateway, workers)")
    verbs = p.add_subparsers(dest="stack_command", metavar="VERB", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--home", help="stack home (default ADVREC_HOME)")
        q.add_argument("--port", type=int, default=8000, help="gateway port; the services take the next three "
                                                              "(default 8000: 8001-8003)")
        q.add_argument("--redis-url", help="default ADVREC_REDIS_URL")
        q.add_argument("--no-services", action="store_true", help="only gateway + workers")
        q.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")

    q = verbs.add_parser("up", help="start everything and wait for /readyz")
    common(q)
    q.set_defaults(func=_up)
    q = verbs.add_parser("down", help="stop every process `up` started (with the Redis it started)")
    common(q)
    q.set_defaults(func=_down)
    q = verbs.add_parser("status", help="the stack's processes (exit 1 if any is down)")
    common(q)
    q.set_defaults(func=_status)
    q = verbs.add_parser("restart", help="restart one process of the running stack now (e.g. worker-attack, gateway)")
    q.add_argument("name")
    common(q)
    q.set_defaults(func=_restart)
    q = verbs.add_parser("reconcile", help="re-drive non-terminal jobs (lost messages, dead workers)")
    common(q)
    q.set_defaults(func=_reconcile)
    q = verbs.add_parser("hash-key", help="print the SHA-256 of an API key (for ADVREC_API_KEY_HASHES)")
    q.add_argument("key")
    q.set_defaults(func=_hash_key)
