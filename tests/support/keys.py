"""A fixed key for tests that build stores and audit logs directly (a run makes its own key file)."""

import os
from pathlib import Path

from anpr.storage.keys import Keys

TEST_SECRET = bytes(range(32))
TEST_KEYS = Keys.from_secret(TEST_SECRET)


def write_key_file(folder: Path, name: str = "anpr.key") -> Path:
    """TEST_KEYS as a key file (store.key_file) in `folder`, as a run would have made it."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(TEST_SECRET.hex() + "\n")
    return path
