"""The one exception type users see. The CLI prints it as a single `error:` line."""

MAX_MESSAGE = 2000


class Torch2MLXError(Exception):
    """A problem caused by input or options (bad path, corrupt file, hostile pickle, ...).

    Anything else that escapes is a bug in torch2mlx, not in the user's input.
    """


class CheckpointError(Torch2MLXError):
    """A file that does not hold what its format promises. The message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one printable line of at most about ``limit`` characters.

    Messages quote what a file holds (zip member names, dtype strings, tensor
    names): a newline there would forge a second line, a terminal escape would
    reach the user's terminal, and a megabyte string would flood it.
    """
    if len(text) > limit:
        text = text[: limit * 2 // 3] + " [...] " + text[-(limit // 3) :]
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
