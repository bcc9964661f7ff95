"""What a plain `kpc-trio run` imports: cryptography (about 8 MiB of RSS) only when needed."""

from __future__ import annotations

import subprocess
import sys


def test_serving_without_tls_or_license_does_not_import_cryptography() -> None:
    probe = ("import sys, kpc_trio.cli, kpc_trio.service; "
             "print(sorted(m for m in sys.modules if m.startswith('cryptography')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
