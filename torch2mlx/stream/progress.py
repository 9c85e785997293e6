"""What a run shows on stderr while it works: a byte-count bar and transient status lines."""

from __future__ import annotations

import sys


def progress_bar(total: int, enabled: bool, desc: str = "converting", fetched=None):
    """``(bar, update)`` of a byte-count bar on stderr, ``(None, None)`` when not ``enabled``.

    ``fetched()``: bytes a remote source has sent so far, shown beside the bar with their rate.
    """
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=desc,
        dynamic_ncols=True,
        leave=False,
    )
    if fetched is None:
        return bar, bar.update
    import time

    from ..core.sizes import human_bytes

    t0, base = time.monotonic(), fetched()

    def update(n: int) -> None:
        got = fetched() - base
        rate = got / max(time.monotonic() - t0, 1e-3)
        bar.set_postfix_str(f"fetched {human_bytes(got)}, {human_bytes(rate)}/s", refresh=False)
        bar.update(n)

    return bar, update


def status_line(text: str | None) -> None:
    """A transient line on stderr while a slow step runs; erased (``None``) when it is done, as the bar is."""
    from ..errors import one_line

    sys.stderr.write("\r\033[K" + (one_line(text) if text else ""))
    sys.stderr.flush()
