"""The README's examples run, as written, against a real bridge with fake backends.

Every ```sh block holding `curl` and every ```python block of README.md (or of the file
named by $README_EXAMPLES_FILE) is run against a test bridge (testkit/fake_claude.py as the
CLI, testkit/fake_ollama.py as Ollama), with `http://127.0.0.1:8080` rewritten to its URL:

- each curl command (backslash-continued lines joined, `#` comment lines skipped, split
  with shlex, no shell) is one test, id'd by its README line; `--fail-with-body -sS` is
  added, and it must exit 0 with a body that parses: JSON, SSE (`data:` JSON events ending
  in `[DONE]`, no error event) or, for /metrics, Prometheus text;
- the python blocks run in order in one namespace (later blocks use `client` from earlier
  ones) in one test, which names the README line of the block that failed.

A block right after an HTML comment `<!-- not-run -->` (blank lines between allowed) is not
run: for configuration examples (systemd, nginx) and commands that need a real machine.
"""
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.harness import Running

ROOT = Path(__file__).resolve().parent.parent
README = Path(os.environ.get("README_EXAMPLES_FILE") or ROOT / "README.md")
README_URL = "http://127.0.0.1:8080"
NOT_RUN = "<!-- not-run -->"
SH_LANGS = {"sh", "bash", "shell"}
PY_LANGS = {"python", "py"}
FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PROM_LINE_RE = re.compile(
    r"^(#( (HELP|TYPE) \S+.*)?|[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? "
    r"[-+]?([0-9.eE+-]+|NaN|Inf)( -?\d+)?)$")


@dataclass
class Block:
    lang: str
    line: int        # README line of the opening fence (1-based)
    text: str        # the block's content
    not_run: bool


def extract_blocks(markdown):
    """The fenced code blocks of MARKDOWN, in order."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(lang, start + 1, "\n".join(body) + "\n", prev == NOT_RUN))
        i += 1
    return blocks


def curl_commands(block):
    """(README line, argv) of each command in a sh block; comments skipped, `\\` joined."""
    out, cmd, first = [], "", None
    for n, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.strip()
        if not cmd and (not line or line.startswith("#")):
            continue
        if first is None:
            first = n
        if line.endswith("\\"):
            cmd += line[:-1] + " "
            continue
        out.append((first, shlex.split(cmd + line)))
        cmd, first = "", None
    if cmd:
        out.append((first, shlex.split(cmd)))
    return out


def runnable(blocks):
    return [b for b in blocks if not b.not_run]


def curl_examples():
    blocks = extract_blocks(README.read_text(encoding="utf-8"))
    params = []
    for b in runnable(blocks):
        if b.lang in SH_LANGS and re.search(r"\bcurl\b", b.text):
            for line, argv in curl_commands(b):
                params.append(pytest.param(argv, id=f"README.md:{line}"))
    return params


def python_blocks():
    blocks = extract_blocks(README.read_text(encoding="utf-8"))
    return [b for b in runnable(blocks) if b.lang in PY_LANGS]


# ----------------------------------------------------------------------------------------
# A bridge for the whole module
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def readme_bridge(tmp_path_factory):
    from testkit import fake_ollama
    tmp = tmp_path_factory.mktemp("readme")
    ollama = fake_ollama.start()
    ollama.add_model("nomic-embed-text")  # the embeddings example's
    with pytest.MonkeyPatch.context() as mp:
        # The fake CLI inherits the bridge's environment: its sessions and logs go here.
        mp.setenv("CLAUDE_CONFIG_DIR", str(tmp / "claude-config"))
        mp.setenv("FAKE_CLAUDE_LOG", str(tmp / "fake-log"))
        mp.delenv("CLAUDECODE", raising=False)
        br = Running(tmp, {"OLLAMA_URL": ollama.url})
        try:
            yield br
        finally:
            br.stop()
            ollama.stop()


def rewrite(text, br):
    return text.replace(README_URL, br.url)


# ----------------------------------------------------------------------------------------
# The extractor itself
# ----------------------------------------------------------------------------------------

def test_extractor_joins_lines_skips_comments_and_honours_not_run():
    md = ("intro\n\n```sh\n# a comment\ncurl http://127.0.0.1:8080/a \\\n"
          "  -H 'X-A: b c'\n\n# next\ncurl -N 'http://127.0.0.1:8080/b?x=1&y=2'\n```\n\n"
          "<!-- not-run -->\n\n```sh\ncurl http://example.com/\n```\n"
          "```python\nx = 1\n```\n<!-- not-run -->\n```ini\n[Service]\n```\n")
    blocks = extract_blocks(md)
    assert [(b.lang, b.line, b.not_run) for b in blocks] == [
        ("sh", 3, False), ("sh", 14, True), ("python", 17, False), ("ini", 21, True)]
    assert curl_commands(blocks[0]) == [
        (5, ["curl", "http://127.0.0.1:8080/a", "-H", "X-A: b c"]),
        (9, ["curl", "-N", "http://127.0.0.1:8080/b?x=1&y=2"])]
    assert [b.lang for b in runnable(blocks)] == ["sh", "python"]


def test_readme_has_examples():
    assert len(curl_examples()) >= 3
    assert len(python_blocks()) >= 2


# ----------------------------------------------------------------------------------------
# curl
# ----------------------------------------------------------------------------------------

def check_body(body, argv):
    """The body must parse: JSON, an SSE stream, or Prometheus text for /metrics."""
    text = body.strip()
    assert text, "empty body"
    if text.startswith(("data:", ":")):
        events = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
        assert events and events[-1] == "[DONE]", f"stream does not end with [DONE]:\n{body}"
        for ev in events[:-1]:
            obj = json.loads(ev)
            assert "error" not in obj, f"error event in the stream: {ev}"
        return
    if any(a.split("?")[0].rstrip("/").endswith("/metrics") for a in argv):
        bad = [ln for ln in text.splitlines() if not PROM_LINE_RE.match(ln)]
        assert not bad, f"not Prometheus text: {bad[:3]}"
        return
    obj = json.loads(text)
    assert not (isinstance(obj, dict) and "error" in obj), body


@pytest.mark.parametrize("argv", curl_examples())
def test_readme_curl(readme_bridge, argv):
    curl = shutil.which("curl")
    if not curl:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed")
        pytest.skip("curl is not installed")
    assert argv[0] == "curl", f"only curl commands can be run: {shlex.join(argv)}"
    argv = [curl, "--fail-with-body", "-sS", "--max-time", "60"] + [
        rewrite(a, readme_bridge) for a in argv[1:]]
    out = subprocess.run(argv, capture_output=True, timeout=90)
    body = out.stdout.decode("utf-8", "replace")
    assert out.returncode == 0, (f"curl exited {out.returncode}: "
                                 f"{out.stderr.decode(errors='replace')}\n{body}")
    check_body(body, argv)


# ----------------------------------------------------------------------------------------
# python
# ----------------------------------------------------------------------------------------

def test_readme_python_blocks_in_order(readme_bridge):
    blocks = python_blocks()
    namespace = {"__name__": "__readme__"}
    for block in blocks:
        source = rewrite(block.text, readme_bridge)
        # Padded so that a traceback's line numbers are the README's.
        code = compile("\n" * block.line + source, str(README), "exec")
        printed, failure = io.StringIO(), None
        try:
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
        except Exception:
            failure = traceback.format_exc()
        if failure:
            pytest.fail(f"README.md:{block.line}: the python block failed:\n{failure}"
                        f"it printed:\n{printed.getvalue()}", pytrace=False)
