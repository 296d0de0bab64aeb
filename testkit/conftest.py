"""The fixtures the tests in this folder use (defined in testkit/harness.py)."""

from testkit.harness import br, bridge_process, ollama_fake, start  # noqa: F401
