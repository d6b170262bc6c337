"""Prints each of the installed slao's declared requirements (extras included) with the version installed.

Run by tools/test-ends.sh inside an end's environment. At the low end, a requirement installed above its
lower bound is marked ABOVE: that bound was not what ran (another requirement lifted it), so the range
in pyproject.toml should start where the test did.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement
from packaging.version import Version

import slao


def lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def main(end: str) -> int:
    print(f"python {sys.version.split()[0]}; slao {version('slao')} from {slao.__file__}")
    above = 0
    seen = set()
    for line in requires("slao") or []:
        req = Requirement(line)
        if req.name in seen or req.name == "slao":
            continue
        seen.add(req.name)
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            print(f"  {req.name:14} {str(req.specifier):18} not installed")
            continue
        mark = ""
        low = lower_bound(req)
        if end == "low" and low is not None and Version(installed.public) != low:
            mark = "  ABOVE the lower bound"
            above += 1
        print(f"  {req.name:14} {str(req.specifier):18} {installed}{mark}")
    return 1 if above else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "high"))
