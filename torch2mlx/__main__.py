import sys

from .cli import _numpy_on_first_use, alias_argv, main

_numpy_on_first_use()

# `python -m torch2mlx model.pt out/` (the original tool's form) is an alias of `t2mlx stream`.
raise SystemExit(main(alias_argv(sys.argv[1:])))
