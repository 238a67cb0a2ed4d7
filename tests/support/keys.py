"""A fixed key for tests that build stores and audit logs directly (a run makes its own key file)."""

from anpr.keys import Keys

TEST_KEYS = Keys.from_secret(bytes(range(32)))
