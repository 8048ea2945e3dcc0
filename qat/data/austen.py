"""Jane Austen's six novels as plain text, from the R package ``janeaustenr``.

Debian ships it as ``r-cran-janeaustenr`` (``apt-get install --no-install-recommends
r-cran-janeaustenr``); the novels sit in the package's lazy-load data base
(``janeaustenr/data/Rdata.rdx|.rdb``), one character vector per novel with one element per
printed line. :func:`novels` reads them with :mod:`qat.data.rds`; R itself is not needed.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from .rds import read_lazyload

__all__ = ["NOVELS", "APT_INSTALL", "AustenNotFoundError", "find_data", "novels", "novel"]

#: Object names in the package, in publication order.
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
APT_INSTALL = "apt-get install -y --no-install-recommends r-cran-janeaustenr"


class AustenNotFoundError(FileNotFoundError):
    """The janeaustenr package is not installed."""


def _candidates() -> Iterable[str]:
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        for d in os.environ.get(var, "").split(os.pathsep):
            if d:
                yield os.path.join(d, "janeaustenr")
    yield from ("/usr/lib/R/site-library/janeaustenr", "/usr/local/lib/R/site-library/janeaustenr",
                "/usr/lib/R/library/janeaustenr")
    yield from glob.glob("/usr/local/lib/R/*/janeaustenr") + glob.glob("/opt/R/*/lib/R/library/janeaustenr")


def find_data(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The ``.../janeaustenr/data/Rdata`` base path (without .rdx/.rdb)."""
    roots = [os.fspath(root)] if root is not None else list(_candidates())
    for r in roots:
        base = Path(r) / "data" / "Rdata"
        if base.with_suffix(".rdx").is_file() and base.with_suffix(".rdb").is_file():
            return base
    raise AustenNotFoundError(
        "Jane Austen's novels come from the R package janeaustenr, which is not installed "
        f"(looked in {', '.join(roots)}); on Debian/Ubuntu: {APT_INSTALL}"
    )


def novels(root: Optional[Union[str, os.PathLike]] = None) -> Dict[str, str]:
    """``{name: text}`` for the six novels (lines joined with newlines), in publication order."""
    objs = read_lazyload(find_data(root), list(NOVELS))
    return {name: "\n".join("" if line is None else line for line in objs[name]) for name in NOVELS}


def novel(name: str, root: Optional[Union[str, os.PathLike]] = None) -> str:
    """One novel's text by its package name (``"emma"``, ``"persuasion"``, ...)."""
    if name not in NOVELS:
        raise ValueError(f"unknown novel {name!r}; one of {', '.join(NOVELS)}")
    lines = read_lazyload(find_data(root), [name])[name]
    return "\n".join("" if line is None else line for line in lines)
