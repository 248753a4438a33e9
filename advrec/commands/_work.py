"""A job's estimated work, as `advrec run --validate` and `advrec submit --validate` print it."""

from __future__ import annotations


def format_work(work: dict) -> str:
    """The estimated work of a job (``JobWork.to_json()``, or a gateway's ``work``) as lines for a person."""
    limit = f" (this key's limit: {work['limit_cpu_hours']:g})" if work.get("limit_cpu_hours") else ""
    lines = [f"estimated work: {work['cpu_hours']:.3g} CPU-hours on a 2-core machine{limit}, {work['steps']} steps; "
             "the largest parts:"]
    lines += [f"  {row['share']:6.1%}  {row['part']}" for row in work.get("largest", [])[:3]]
    return "\n".join(lines)
