"""A service process imports what it runs: ``isoperf recorder`` does not load the scientific
libraries of the simulator and the pk service, nor the tools' (memory, start-up time)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"numpy", "scipy", "pandas", "matplotlib", "pyarrow", "aio_pika", "grafana_client"}


def loaded(code: str) -> set[str]:
    """The heavy top-level packages loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split()) & HEAVY


def test_the_recorder_and_alerts_load_no_scientific_library() -> None:
    for service in ("recorder", "alerts"):
        assert loaded(f"import isoperf.tools.cli, services.{service}.__main__") == set(), service
    assert loaded("import isoperf.tools.cli, services.leakage.__main__") == {"numpy"}


def test_the_command_tree_does_load_them() -> None:
    """The check above can fail: building every command's parser imports the tools' modules."""
    assert {"numpy", "scipy"} <= loaded("from isoperf.tools.cli import parser\nparser()")
