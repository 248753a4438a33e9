"""The healthcheck of the stack's HTTP containers (gateway, services): ``python -m advrec.stack.healthcheck``.

Healthy when ``--url`` answers 200 (the gateway's ``/readyz``, a service's ``/healthz``). Docker marks an
unhealthy container but does not restart it, so when ``--live`` (default: ``--url``) fails
``--restart-after`` times in a row the check stops PID ``--pid`` (SIGTERM) and the container's restart
policy starts it again. Readiness alone never restarts the gateway: it is not ready while Redis is
down or a queue has no consumer, and a restart cures neither.
"""

from __future__ import annotations

import argparse
import urllib.request

from advrec.pipeline.recovery import restart_if_failing


def answers(url: str, timeout: float = 3.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- a local health URL
            return resp.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m advrec.stack.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="healthy when it answers 200")
    p.add_argument("--live", help="liveness URL whose failures restart the process (default: --url)")
    p.add_argument("--pid", type=int, default=1)
    p.add_argument("--restart-after", type=int, default=0, help="failed liveness checks in a row before SIGTERM")
    args = p.parse_args(argv)
    ready = answers(args.url)
    live = ready if args.live in (None, args.url) else answers(args.live)
    if restart_if_failing(args.pid, live, args.restart_after, key="http"):
        print(f"{args.live or args.url} failed {args.restart_after} times in a row: stopped process {args.pid}")
        return 1
    print("healthy" if ready else f"{args.url} does not answer 200")
    return 0 if ready else 1


if __name__ == "__main__":
    raise SystemExit(main())
