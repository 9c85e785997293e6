"""The one exception type users see. The CLI prints it as a single `error:` line."""


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
