"""The fixtures the tests in this folder use (defined in testkit/harness.py)."""

from testkit.harness import (  # noqa: F401
    br, bridge_process, fake_api, ollama_fake, real_cli, start)
