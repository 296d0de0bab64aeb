"""The `[prefix:KIND...]` markers by which tests steer the fakes (fake_claude.py reads
`[fake:...]` in prompts, fake_anthropic.py `[upstream:...]` in the last user text)."""

import json
import re

_KIND = re.compile(r"[a-z0-9-]+")


def scan(text, prefix, named=(), objects=(), texts=(), flags=()):
    """[(kind, arg)] of the markers in text, in order. `named` kinds read NAME:{json}
    (arg (name, object)), `objects` {json}, `texts` TEXT up to "]"; `flags` have no arg
    (None). Anything malformed is skipped."""
    out, pos, decoder, start = [], 0, json.JSONDecoder(), "[" + prefix + ":"
    while True:
        i = text.find(start, pos)
        if i < 0:
            return out
        pos = i + len(start)
        match = _KIND.match(text, pos)
        if match is None:
            continue
        kind, j = match.group(), match.end()
        try:
            if kind in flags and text.startswith("]", j):
                out.append((kind, None))
                pos = j + 1
            elif kind in texts and text.startswith(":", j):
                end = text.index("]", j)
                out.append((kind, text[j + 1:end]))
                pos = end + 1
            elif kind in named and text.startswith(":", j):
                colon = text.index(":", j + 1)
                obj, end = decoder.raw_decode(text, colon + 1)
                if text.startswith("]", end) and isinstance(obj, dict):
                    out.append((kind, (text[j + 1:colon], obj)))
                    pos = end + 1
            elif kind in objects and text.startswith(":", j):
                obj, end = decoder.raw_decode(text, j + 1)
                if text.startswith("]", end):
                    out.append((kind, obj))
                    pos = end + 1
        except ValueError:
            continue
