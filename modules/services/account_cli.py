"""``python app.py users ...``: add, list, remove accounts and change passwords from a shell.

``users add NAME --role admin|user [--password PW] [--data-dir DIR]`` asks for the password twice
when ``--password`` is not given; ``users list``, ``users remove NAME``, ``users passwd NAME``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def accounts_main(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run one ``users`` command; the exit status (0 done, 2 refused, with the reason on stderr)."""
    raise NotImplementedError
