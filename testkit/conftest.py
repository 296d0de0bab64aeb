"""Fixtures the tests in this folder share with test_bridge.py (defined there)."""

from test_bridge import br, bridge_process, ollama_fake, start  # noqa: F401  (pytest finds them)
