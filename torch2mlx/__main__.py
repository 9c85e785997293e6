import sys

from .cli import alias_argv, main

# `python -m torch2mlx model.pt out/` (the original tool's form) is an alias of `t2mlx stream`.
raise SystemExit(main(alias_argv(sys.argv[1:])))
