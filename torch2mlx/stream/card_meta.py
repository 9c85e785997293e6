"""A model card's YAML front matter: split from the card, merged with ours, written back.

The stream path has no YAML dependency, so the source card's front matter is merged as text: it is cut
into top-level keys (each key with its indented or ``- item`` lines), ours replace or join theirs key by
key, and every other key of theirs is written back exactly as it was (nested blocks we do not need to
understand included). PyYAML, when importable, only checks that the source's front matter is YAML and
reads its ``tags``; without it a small reader takes the plain forms (``key: value``, ``[a, b]``, ``- a``).
"""

from __future__ import annotations

import re

_KEY = re.compile(r"^(['\"]?)([A-Za-z0-9_][\w.\-]*)\1\s*:(?:\s|$)")
# keys our value replaces (they describe the converted model); theirs win for the others we set
OURS_WIN = ("library_name", "base_model", "base_model_relation")


def quote(s: str) -> str:
    """``s`` as a YAML double-quoted scalar: printable ASCII as is, the rest escaped (never a YAML surprise
    such as ``yes``, ``1e3`` or ``: `` changing its meaning)."""
    out = []
    for ch in str(s):
        c = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        elif c < 0x10000:
            out.append(f"\\u{c:04x}")
        else:
            out.append(f"\\U{c:08x}")
    return '"' + "".join(out) + '"'


def split_card(text: str) -> tuple[str | None, str]:
    """``(front matter text or None, body)`` of a model card (``---`` lines around the front matter)."""
    t = text[1:] if text.startswith("\ufeff") else text
    lines = t.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n").rstrip() != "---":
        return None, t
    for i in range(1, len(lines)):
        if lines[i].rstrip("\r\n").rstrip() in ("---", "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    return None, t  # no closing line: not front matter


def blocks(front: str) -> list[tuple[str | None, str]]:
    """Front matter text as ``[(top-level key or None, its lines)]``; None: comments or blank lines before
    the first key. Joined back, the blocks are the text."""
    out: list[tuple[str | None, str]] = []
    for line in front.splitlines(keepends=True):
        m = _KEY.match(line)
        if m:
            out.append((m.group(2), line))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            out.append((None, line))
    return out


def _scalar(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


def _plain_list(block: str) -> list[str] | None:
    """A key's value as a list of strings in the plain forms (``k: a``, ``k: [a, b]``, ``- a`` lines)."""
    first, _, rest = block.partition("\n")
    value = first.split(":", 1)[1].split(" #", 1)[0].strip()
    if value.startswith("[") and value.endswith("]"):
        return [_scalar(x) for x in value[1:-1].split(",") if x.strip()]
    if value:
        return [_scalar(value)]
    items = []
    for line in rest.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not s.startswith("- "):
            return None  # a form this reader does not know
        items.append(_scalar(s[2:].split(" #", 1)[0]))
    return items


def parse(front: str) -> tuple[dict | None, str | None]:
    """The front matter as a dict (PyYAML's, or the plain reader's for the keys it understands) or None,
    with why not."""
    try:
        import yaml
    except ImportError:
        return {k: _plain_list(b) for k, b in blocks(front) if k is not None}, None
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as e:
        return None, f"not valid YAML ({str(e).splitlines()[0]})"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, "not a YAML mapping"
    return data, None


def _tags(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def emit(key: str, value) -> str:
    """One top-level key: a string, or a list of strings (block form)."""
    if isinstance(value, (list, tuple)):
        return f"{key}:\n" + "".join(f"- {quote(v)}\n" for v in value)
    return f"{key}: {quote(value)}\n"


def merge(ours: dict, theirs_front: str | None) -> tuple[str, str | None]:
    """Front matter text: theirs with ours merged in, and why theirs could not be used (None when it was).

    ``tags`` are the union (theirs first); keys in ``OURS_WIN`` take our value; for every other key of
    ours, theirs wins when present. Keys of theirs we do not set are kept as they were written.
    ``ours`` maps a key to a string or a list of strings (None: not set).
    """
    ours = {k: v for k, v in ours.items() if v is not None}
    if theirs_front is None:
        return "".join(emit(k, v) for k, v in ours.items()), None
    data, why = parse(theirs_front)
    if data is None:
        return "".join(emit(k, v) for k, v in ours.items()), why
    text = []
    done = set()
    for key, block in blocks(theirs_front):
        if key == "tags" and "tags" in ours:
            theirs = _tags(data.get("tags"))
            tags = theirs + [t for t in ours["tags"] if t not in theirs]
            text.append(emit("tags", tags))
            done.add(key)
        elif key in OURS_WIN and key in ours:
            text.append(emit(key, ours[key]))
            done.add(key)
        else:
            if key is not None:
                done.add(key)
            text.append(block if block.endswith("\n") else block + "\n")
    text += [emit(k, v) for k, v in ours.items() if k not in done]
    return "".join(text), None
