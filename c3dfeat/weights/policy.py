"""Download policy from arguments or the environment: hash strictness and the mirror.

* ``require_hashes`` (pip's word): refuse every checkpoint without a published SHA-256 (or
  published prefix) instead of trusting it on first use. ``None`` reads ``$C3DFEAT_REQUIRE_HASHES``.
* ``weights_mirror``: a base URL tried before the published ones; the file is fetched from
  ``<mirror>/<file name>``. ``None`` reads ``$C3DFEAT_WEIGHTS_MIRROR``.
"""
from __future__ import annotations

import os
import urllib.parse
from typing import Optional

from c3dfeat.errors import ConfigError

ENV_REQUIRE_HASHES = "C3DFEAT_REQUIRE_HASHES"
ENV_WEIGHTS_MIRROR = "C3DFEAT_WEIGHTS_MIRROR"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def require_hashes_from(value: Optional[bool]) -> bool:
    """`value`, or the truth of ``$C3DFEAT_REQUIRE_HASHES`` when it is None."""
    if value is not None:
        return bool(value)
    raw = os.environ.get(ENV_REQUIRE_HASHES, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{ENV_REQUIRE_HASHES}={raw!r} is neither 1 nor 0 (true/false, yes/no, on/off)")


def mirror_from(value: Optional[str]) -> Optional[str]:
    """`value`, or ``$C3DFEAT_WEIGHTS_MIRROR`` when it is None; "" means no mirror."""
    raw = os.environ.get(ENV_WEIGHTS_MIRROR, "") if value is None else value
    raw = raw.strip()
    if not raw:
        return None
    if urllib.parse.urlsplit(raw).scheme not in ("http", "https", "file", "ftp"):
        raise ConfigError(f"weights mirror {raw!r} is not a URL (http://, https://, file:// or ftp://); "
                          "a directory of weights files goes into C3DFEAT_WEIGHTS instead")
    return raw.rstrip("/")


def mirror_url(mirror: str, file_name: str) -> str:
    """The URL of `file_name` on `mirror` (the name as `c3dfeat weights list` shows it)."""
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(file_name)}"
