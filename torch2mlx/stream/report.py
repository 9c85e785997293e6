"""Human-readable plan and report text (the CLI prints these; ``--json`` prints the dicts).

Names and notes come from the checkpoint, so each is escaped to one printable
line (``one_line``): no terminal escapes, no forged lines, and no lone
surrogate that stdout cannot encode.
"""

from __future__ import annotations

from ..core.sizes import human_bytes
from ..errors import one_line


def format_plan(plan, limit: int | None = None) -> str:
    rows: list[tuple[str, ...]] = []
    total = sum(len(op.outputs) for op in plan.ops)
    for op in plan.ops:
        if limit is not None and len(rows) >= limit:
            break  # the rest is counted, not formatted: 100,000 rows took a second
        src = "+".join(e.name for e in op.sources)
        for o in op.outputs:
            rows.append(
                (
                    one_line(o.name),
                    one_line(src) if src != o.name else "=",
                    op.rule,
                    op.rule_source,
                    f"{op.source_dtype.name}->{o.dtype.name}" if o.dtype != op.source_dtype else o.dtype.name,
                    "x".join(map(str, o.shape)) or "scalar",
                    plan.shards[o.shard].file,
                )
            )
    head = ("output", "source", "rule", "from", "dtype", "shape", "shard")
    shown = rows if limit is None else rows[:limit]
    widths = [min(max(len(str(r[i])) for r in [head] + shown), 60) for i in range(len(head))]
    lines = ["  ".join(str(c)[:60].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head] + shown]
    if len(shown) < total:
        lines.append(f"... {total - len(shown)} more (use --json for all)")
    lines.append("")
    lines.append(
        f"{total} output tensors in {len(plan.shards)} shard(s), "
        f"{human_bytes(plan.nbytes_in)} in -> {human_bytes(plan.nbytes_out)} out"
    )
    lines += _tail(plan)
    return "\n".join(lines)


def _tail(plan) -> list[str]:
    target = getattr(plan, "target", None)
    lines = [f"target: {target}"] if target is not None else []
    lines += ["rules: " + ", ".join(f"{k} {v}" for k, v in plan.rules_by_source().items())]
    if plan.dropped:
        lines.append(
            f"dropped: {len(plan.dropped)} ("
            + "; ".join(one_line(f"{n}: {w}") for n, w in plan.dropped[:5])
            + (
                f"; ... and {len(plan.dropped) - 5} more, all in --json and torch2mlx.json"
                if len(plan.dropped) > 5
                else ""
            )
            + ")"
        )
    for n in plan.notes:
        lines.append(f"note: {one_line(n)}")
    for w in plan.warnings[:20]:
        lines.append(f"warning: {one_line(w)}")
    if len(plan.warnings) > 20:
        lines.append(f"warning: ... and {len(plan.warnings) - 20} more (see torch2mlx.json)")
    return lines


def format_result(res) -> str:
    if res.dry_run:
        return format_plan(res.plan, limit=200)
    p = res.plan
    n_out = res.tensors_out
    rate = res.nbytes_in / res.seconds / 2**20 if res.seconds else 0.0  # MiB/s, as human_bytes counts
    shards = res.format in ("safetensors", "bin")
    where = f"{len(res.shards)} shard(s)" if shards else f"a {res.format} store"
    lines = [
        f"converted {len(res.checkpoint.entries)} tensors -> {n_out} in {where} at {one_line(str(res.out))}",
        f"{human_bytes(res.nbytes_in)} in, {human_bytes(res.nbytes_out)} out, {res.seconds:.2f} s, {rate:.0f} MiB/s"
        + (f" (this run only: {res.reused} reused shard(s) not counted)" if res.reused else ""),
    ]
    if res.sidecars:
        lines.append("copied: " + one_line(", ".join(res.sidecars)))
    if res.card:
        lines.append(f"card: {res.card}")
    return "\n".join(lines + _tail(p))
