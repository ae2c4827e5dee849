"""The ranges protobuf's well-known ``Timestamp`` and ``Duration`` define, as plain
numbers: no imports, so the CLI's argument parsing checks against them at no cost."""

from __future__ import annotations

from typing import Final

#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, in Unix seconds
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
#: The first and last nanosecond a Timestamp holds
FIRST_TIMESTAMP_NS: Final = MIN_TIMESTAMP_SECONDS * 1_000_000_000
LAST_TIMESTAMP_NS: Final = (MAX_TIMESTAMP_SECONDS + 1) * 1_000_000_000 - 1
#: About 10,000 years either way
MAX_DURATION_SECONDS: Final = 315_576_000_000
