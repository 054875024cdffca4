"""`UserError`, a problem the user can fix, with a message that says what to do, and `run_main`, which reports
it as `error: <message>` on stderr with the error's exit code. Standard library only: every module imports it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 1


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name if empty), cut to `limit` characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_main(main: Callable[[], object]) -> None:
    """Call `main()`; a UserError becomes `error: <message>` on stderr and the error's exit code."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def not_a_script(module_file: str) -> None:
    """Exit with one line saying that a library module is not run by itself, and what to run."""
    sys.exit(
        f"error: {Path(module_file).name} is a library module; run train.py, generate.py, evaluate.py, "
        "export_onnx.py, latent.py or align.py (each has --help)"
    )


if __name__ == "__main__":
    not_a_script(__file__)
