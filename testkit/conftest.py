"""The fixtures the tests in this folder use (defined in testkit/harness.py and testkit/pg.py)."""

from testkit.harness import (  # noqa: F401
    br, bridge_process, fake_api, ollama_fake, real_cli, start)
from testkit.pg import pg_cluster, pg_url  # noqa: F401,E402  (a real PostgreSQL: testkit/pg.py)
