"""Filter for GRUB kernel command lines: replace our arguments, keep everyone else's."""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = """
name: kernel_args
short_description: merge kernel arguments into a GRUB defaults file's GRUB_CMDLINE_LINUX
"""


def grub_cmdline_merge(grub_text: str, args: list[str]) -> str:
    """The GRUB_CMDLINE_LINUX line with ``args`` set: an existing ``key=`` of the same key is replaced."""
    m = re.search(r'(?m)^GRUB_CMDLINE_LINUX="([^"]*)"', grub_text)
    current = m.group(1).split() if m else []
    keys = {a.split("=", 1)[0] for a in args}
    kept = [a for a in current if a.split("=", 1)[0] not in keys]
    return 'GRUB_CMDLINE_LINUX="' + " ".join(kept + list(args)) + '"'


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"grub_cmdline_merge": grub_cmdline_merge}
