"""One exception hierarchy; each class carries the exit code of the command-line contract.

Messages are written for the operator and rendered as one line:
``error: <what>: <which> (<what to do>)``.
"""

from __future__ import annotations


class VmmError(Exception):
    """Base of every error vmm expects. ``exit_code`` follows docs/exit-codes.md."""

    exit_code = 1

    def __init__(self, what: str, which: str = "", hint: str = "") -> None:
        self.what = what
        self.which = which
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = f"error: {self.what}"
        if self.which:
            text += f": {self.which}"
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split("\n"))


class UsageError(VmmError):
    """Bad usage or bad input: unsafe names, ambiguous choices, refused confirmation."""

    exit_code = 2


class NotFoundError(VmmError):
    """Model not in the models root, or repo/revision/file not on the Hub."""

    exit_code = 3


class RemoteError(VmmError):
    """Network, timeouts, 5xx or refused auth, after retries."""

    exit_code = 4


class IntegrityError(VmmError):
    """A file whose hash, size or header is wrong and could not be repaired."""

    exit_code = 5


class IncompatibleError(VmmError):
    """vLLM cannot serve it, or it does not fit the GPUs."""

    exit_code = 6


class DiskSpaceError(VmmError):
    """Not enough disk space; the message carries bytes needed and free."""

    exit_code = 7


class BusyError(VmmError):
    """The model is locked by another vmm process."""

    exit_code = 8


class VllmMissingError(VmmError):
    """The ``vllm`` executable is not installed or not on PATH."""

    exit_code = 127


class Interrupted(VmmError):
    """Ctrl-C or SIGTERM; resumable state is kept."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "done",
    1: "a bug in vmm (unexpected exception; traceback only with VMM_DEBUG=1)",
    UsageError.exit_code: "bad usage or bad input",
    NotFoundError.exit_code: "not found (models root or Hub)",
    RemoteError.exit_code: "remote failure after retries (network, 5xx, auth)",
    IntegrityError.exit_code: "integrity failure (hash, size or header mismatch)",
    IncompatibleError.exit_code: "incompatible with vLLM or does not fit the GPUs",
    DiskSpaceError.exit_code: "not enough disk space",
    BusyError.exit_code: "busy: locked by another vmm process",
    VllmMissingError.exit_code: "vllm is not installed or not on PATH",
    Interrupted.exit_code: "interrupted; nothing verified is lost",
}
