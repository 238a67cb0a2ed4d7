"""The deployment's secret key, kept in a file outside the database (`store.key_file`).

The database never holds this key, so whoever can read or rewrite the database alone
can neither look a plate up by its keyed hash nor forge the audit log:

    plate_digest   HMAC-SHA256 of a plate: the column reads and passages are searched
                   by, and what the audit log records instead of the plate
    audit_mac      authenticates each audit entry and each exported checkpoint

Each use has its own subkey, derived from the file's key, so that a value made for one
use never verifies as another. The file holds 32 random bytes in hex; it is created
(mode 0600, never overwritten) by the first run that needs it, and trusted only as
anpr's private file (anpr/files.py: not a link, this user's, open to no other user):
whoever else could write it could make every plate's hash theirs to reverse. Losing it
loses the ability to look plates up and to verify the audit log: keep a copy where the
database's administrators cannot write (docs/commands.md, "Keys").

The database records the key's fingerprint (`Keys.fingerprint`, which reveals nothing of
the key) when first run with it, and refuses any other key (anpr/storage/identity.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from anpr.errors import ConfigError
from anpr.files import UnsafeFile, read_private
from anpr.files import create as create_file

KEY_BYTES = 32


@dataclass(frozen=True)
class Keys:
    """The subkeys of one key file."""

    plate: bytes
    audit: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> Keys:
        return cls(_derive(secret, b"anpr plate digest v1"), _derive(secret, b"anpr audit mac v1"))

    def plate_digest(self, plate: str) -> str:
        """The keyed hash of a (normalised) plate, 64 hex digits."""
        return hmac.new(self.plate, plate.encode("utf-8"), hashlib.sha256).hexdigest()

    def request_digest(self, plate: str) -> str:
        """The keyed hash a data subject's request is audited under (storage/subjects.py): not
        the plate's stored one (`plate_digest`), so that an erasure leaves nothing in the
        database to find the plate's records by, while whoever holds the key can still tell
        which plate a request was about."""
        return hmac.new(self.plate, b"anpr subject request v1\x00" + plate.encode("utf-8"), hashlib.sha256).hexdigest()

    def audit_mac(self, payload: str) -> str:
        if not self.audit:
            raise ConfigError("these keys hold no audit key (a cluster node's): they cannot authenticate the audit log")
        return hmac.new(self.audit, payload.encode("utf-8"), hashlib.sha256).hexdigest()

    def fingerprint(self) -> str:
        """What names this key in a database (anpr/storage/identity.py): a keyed hash of a fixed
        label, from which neither the key nor a subkey can be found."""
        return hmac.new(self.plate, b"anpr key fingerprint v1", hashlib.sha256).hexdigest()

    def plates_only(self) -> Keys:
        """These keys without the audit subkey: what a process that stores reads but never
        writes the audit log needs (a cluster node, anpr/run/cluster.py)."""
        return Keys(self.plate, b"")


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def load_keys(path: str | os.PathLike[str], create: bool = False) -> Keys:
    """The keys of the file at `path`; with `create`, a new file is made if there is none."""
    path = Path(path).expanduser()
    if create:
        _create(path)
    try:
        text = read_private(path).decode("ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"key file not found: {path} (store.key_file): it is made by the first `anpr run`, "
            f"and without the one that run used, plates cannot be looked up nor the audit log verified"
        ) from None
    except UnsafeFile as exc:
        raise ConfigError(f"key file {path} {exc.reason} (store.key_file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise ConfigError(f"key file {path} does not hold a key ({KEY_BYTES * 2} hex digits)")
    return Keys.from_secret(secret)


def _create(path: Path) -> None:
    """A new key file at `path`, unless there is something there already (another run's
    key, made first: that one is used)."""
    if not path.parent.is_dir():
        raise ConfigError(f"cannot create key file {path}: folder does not exist")
    try:
        create_file(path, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
    except OSError as exc:
        raise ConfigError(f"cannot create key file {path}: {exc.strerror or exc}") from None
