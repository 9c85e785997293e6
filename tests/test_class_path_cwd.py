"""Class paths (``codegen``/``analyze`` SRC, ``stream --model``) import from the current directory, as
``python -m`` would, also when run through the ``t2mlx`` console script (whose sys.path[0] is its own
directory); errors name the option the class path came from."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import assert_one_error, check_converted, torch_save

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

NETS = textwrap.dedent("""\
    import torch.nn as nn
    import layers_helper   # a sibling module: importable the same way

    class Net(nn.Module):
        def __init__(self, dim=4):
            super().__init__()
            self.conv = nn.Conv2d(3, dim, 3)
            self.fc = layers_helper.make(dim)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))
    """)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    (root / "nets.py").write_text(NETS)
    (root / "layers_helper.py").write_text("import torch.nn as nn\n\ndef make(dim):\n    return nn.Linear(dim, 2)\n")
    # the console script as pip writes it, somewhere else than the project
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "t2mlx").write_text("import sys\nfrom torch2mlx.cli import main\nsys.exit(main())\n")
    return root, bin_dir / "t2mlx"


def t2mlx(project, *args):
    root, script = project
    env = dict(os.environ)
    env.pop("T2MLX_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_codegen_imports_a_class_from_the_current_directory(project):
    proc = t2mlx(project, "codegen", "nets:Net", "-o", "net_mlx.py")
    assert proc.returncode == 0, proc.stderr
    src = (project[0] / "net_mlx.py").read_text()
    assert "class Net" in src and "nn.Conv2d" in src


def test_analyze_imports_a_class_from_the_current_directory(project):
    proc = t2mlx(project, "analyze", "nets:Net", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"conv.weight"' in proc.stdout


def test_stream_model_imports_a_class_from_the_current_directory(project):
    root = project[0]
    g = torch.Generator().manual_seed(0)
    sd = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(2, 4, generator=g),
        "fc.bias": torch.randn(2, generator=g),
    }
    torch_save(sd, root / "net.pt")
    proc = t2mlx(project, "stream", "net.pt", "out", "--model", "nets:Net")
    assert proc.returncode == 0, proc.stderr
    check_converted(root / "out", sd, rules={"conv.weight": "conv2d"}, rule_sources={"conv.weight": "model"})


@pytest.mark.parametrize(
    "args, names, not_named",
    [
        (("codegen", "nothere:Net"), ("model class nothere:Net",), "--model"),
        (("analyze", "nothere:Net"), ("model class nothere:Net",), "--model"),
        (("stream", "net.pt", "o2", "--model", "nothere:Net"), ("--model nothere:Net",), None),
        (("analyze", "net.pt", "--model", "nets:Nope"), ("--model nets:Nope", "'Nope'"), None),
        (("codegen", "nets:Nope"), ("model class nets:Nope",), "--model"),
    ],
)
def test_class_path_errors_name_where_it_came_from(project, args, names, not_named):
    root = project[0]
    if not (root / "net.pt").exists():
        torch_save({"conv.weight": torch.zeros(4, 3, 3, 3)}, root / "net.pt")
    err = assert_one_error(t2mlx(project, *args), *names)
    if not_named:
        assert not_named not in err


def test_codegen_kwargs_errors_name_kwargs(project):
    err = assert_one_error(t2mlx(project, "codegen", "nets:Net", "--kwargs", "{bad"), "--kwargs is not valid JSON")
    assert "--model" not in err
    assert_one_error(
        t2mlx(project, "analyze", "nets:Net", "--model-kwargs", "[1]"), "--model-kwargs must be a JSON object"
    )
