"""``s3://`` sources (issue 17) against a local S3-compatible server: moto in server mode, s3fs as the client.

The server is started by this module on 127.0.0.1 (no network); the client finds it the way a user points
it at MinIO, R2 or another S3-compatible store: ``AWS_ENDPOINT_URL`` (botocore) or ``FSSPEC_S3_ENDPOINT_URL``
(fsspec's configuration). The oracle is the same conversion of the local folder: output byte-identical.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from test_remote import _same_output, _tensors  # noqa: E402

import torch2mlx  # noqa: E402
import torch2mlx.stream  # noqa: E402
from torch2mlx.errors import Torch2MLXError  # noqa: E402
from torch2mlx.formats import ranges  # noqa: E402

BUCKET = "models"
PUBLIC = "public-models"
# Credentials and config from the machine running the tests must not leak in (nor the EC2 metadata
# service be asked: a second of timeouts off EC2).
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


def _sharded(d):
    d.mkdir(parents=True)
    weight_map = {}
    for k in (1, 2):
        name = f"model-0000{k}-of-00002.safetensors"
        t = _tensors(20 + k, 3)
        save_file(t, str(d / name), metadata={"format": "pt"})
        weight_map.update({n: name for n in t})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "t2mlx-test", "hidden_size": 512}))
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}))


def _bins(d):
    """torch.save zip shards with an index, one tensor a transposed view (strided in its storage)."""
    d.mkdir(parents=True)
    weight_map = {}
    for k in (1, 2):
        t = {n: v.float() for n, v in _tensors(30 + k, 2).items()}
        t[f"proj.{k}.weight"] = torch.randn(256, 384, generator=torch.Generator().manual_seed(k)).t()
        name = f"pytorch_model-0000{k}-of-00002.bin"
        torch.save(t, d / name)
        weight_map.update({n: name for n in t})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding bucket ``models`` with the folders ``sharded/`` and ``bins/``;
    the environment points s3fs at it with fake credentials. Yields (endpoint, local root)."""
    import boto3
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line a request otherwise
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    root = tmp_path_factory.mktemp("s3-local")
    _sharded(root / "sharded")
    _bins(root / "bins")
    with pytest.MonkeyPatch.context() as mp:
        for k in UNSET:
            mp.delenv(k, raising=False)
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        for folder in ("sharded", "bins"):
            for n in os.listdir(root / folder):
                client.upload_file(str(root / folder / n), BUCKET, f"{folder}/{n}")
        # a public bucket, as open datasets and models are on AWS: anyone may list and read it
        client.create_bucket(Bucket=PUBLIC, ACL="public-read")
        single = root / "sharded" / "model-00001-of-00002.safetensors"
        client.upload_file(str(single), PUBLIC, f"one/{single.name}", ExtraArgs={"ACL": "public-read"})
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield endpoint, root
        finally:
            s3fs.S3FileSystem.clear_instance_cache()  # its client names this server's port
            srv.stop()


SETTINGS = {"passthrough": {}, "q4": {"q_bits": 4}}


@pytest.mark.parametrize("folder", ["sharded", "bins"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_s3_matches_local(s3, tmp_path, folder, setting):
    _, root = s3
    kw = dict(SETTINGS[setting], model=False)
    local = torch2mlx.stream.convert(str(root / folder), tmp_path / "local", **kw)
    before = ranges.STATS.bytes
    res = torch2mlx.stream.convert(f"s3://{BUCKET}/{folder}", tmp_path / "remote", **kw)
    fetched = ranges.STATS.bytes - before
    _same_output(tmp_path / "local", tmp_path / "remote")
    assert res.tensors_out == local.tensors_out
    assert res.checkpoint.path == f"s3://{BUCKET}/{folder}"
    src = sum(os.path.getsize(root / folder / n) for n in os.listdir(root / folder))
    # each byte about once: plus the first 64 KiB of each safetensors file (its header's read), or for the
    # zips their central directory, local headers and data.pkl through 64 KiB windows
    assert src <= fetched <= 1.01 * src + 2 * 8 * 64 * 1024, (fetched, src)
    manifest = json.load(open(tmp_path / "remote" / "torch2mlx.json"))
    assert json.dumps(manifest).count(f"s3://{BUCKET}/{folder}/") >= 2  # the files it was made from


def test_library_convert_takes_an_s3_url(s3, tmp_path):
    _, root = s3
    res = torch2mlx.convert(f"s3://{BUCKET}/sharded", tmp_path / "remote", q_bits=4)
    local = torch2mlx.convert(str(root / "sharded"), tmp_path / "local", q_bits=4)
    _same_output(tmp_path / "local", tmp_path / "remote")
    assert res.tensors_out == local.tensors_out == 6 * 3 + 12  # six weights as (q, scales, biases)
    # the sidecars came along, as from the local folder
    assert json.load(open(tmp_path / "remote" / "config.json"))["model_type"] == "t2mlx-test"
    assert (tmp_path / "remote" / "tokenizer.json").read_bytes() == (root / "sharded" / "tokenizer.json").read_bytes()


def test_one_object_matches_the_local_file(s3, tmp_path):
    _, root = s3
    name = "sharded/model-00002-of-00002.safetensors"
    torch2mlx.stream.convert(str(root / name), tmp_path / "local", model=False, dtype="float16")
    res = torch2mlx.stream.convert(f"s3://{BUCKET}/{name}", tmp_path / "remote", model=False, dtype="float16")
    _same_output(tmp_path / "local", tmp_path / "remote")
    assert res.tensors_out == 9


def test_verify_and_resume_see_an_object_replaced_since(s3, tmp_path):
    import boto3

    from torch2mlx.stream.verify import verify

    endpoint, root = s3
    name = "sharded/model-00001-of-00002.safetensors"
    torch2mlx.stream.convert(f"s3://{BUCKET}/sharded", tmp_path / "out", model=False)
    assert verify(f"s3://{BUCKET}/sharded", tmp_path / "out", quick=True).ok
    data = bytearray((root / name).read_bytes())
    data[-1] ^= 0x40  # same size, other bytes: S3 gives it another ETag
    client = boto3.client("s3", endpoint_url=endpoint)
    client.put_object(Bucket=BUCKET, Key=name, Body=bytes(data))
    try:
        rep = verify(f"s3://{BUCKET}/sharded", tmp_path / "out", quick=True)
        assert not rep.ok and "(etag differ)" in rep.problems[0], rep.problems
        with pytest.raises(Torch2MLXError, match=rf"resume: s3://{BUCKET}/sharded changed since .*\(content hash\)"):
            torch2mlx.stream.convert(f"s3://{BUCKET}/sharded", tmp_path / "out", model=False, resume=True)
    finally:
        client.upload_file(str(root / name), BUCKET, name)


def _cli(env_changes: dict, *args):
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run(
        [sys.executable, "-m", "torch2mlx", "stream", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_endpoint_and_keys_from_fsspec_config(s3, tmp_path):
    # fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables are s3fs's own options: endpoint and keys without AWS_*
    endpoint, root = s3
    no_aws = {k: None for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    fsspec_env = {"FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing"}
    r = _cli({**no_aws, **fsspec_env}, f"s3://{BUCKET}/bins", str(tmp_path / "out"), "--no-model", "--q-bits", "4")
    assert r.returncode == 0, r.stderr
    torch2mlx.stream.convert(str(root / "bins"), tmp_path / "local", q_bits=4, model=False)
    _same_output(tmp_path / "local", tmp_path / "out")


def test_cli_public_bucket_without_credentials(s3, tmp_path):
    # the hint the no-credentials error gives: FSSPEC_S3_ANON=true reads a public bucket without signing
    _, root = s3
    no_keys = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "FSSPEC_S3_ANON": "true"}
    r = _cli(no_keys, f"s3://{PUBLIC}/one", str(tmp_path / "out"), "--no-model")
    assert r.returncode == 0, r.stderr
    (tmp_path / "one").mkdir()  # the file alone, as in the bucket: no sidecars beside it
    single = "model-00001-of-00002.safetensors"
    (tmp_path / "one" / single).write_bytes((root / "sharded" / single).read_bytes())
    torch2mlx.stream.convert(str(tmp_path / "one"), tmp_path / "local", model=False)
    _same_output(tmp_path / "local", tmp_path / "out")


def test_one_object_without_leave_to_list_its_folder(s3, tmp_path, monkeypatch):
    # S3 grants reading an object and listing its bucket apart (moto does not enforce the second): a
    # refused listing of the folder leaves the object alone, as the user named it
    import fsspec

    _, root = s3
    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}/sharded")  # the instance the converter gets (fsspec caches it)
    real_ls = fs.ls

    def ls(path, *args, **kwargs):
        if path.rstrip("/") == f"{BUCKET}/sharded":
            raise PermissionError("Access Denied")
        return real_ls(path, *args, **kwargs)

    monkeypatch.setattr(fs, "ls", ls)
    single = "model-00001-of-00002.safetensors"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / single).write_bytes((root / "sharded" / single).read_bytes())
    torch2mlx.stream.convert(str(tmp_path / "one" / single), tmp_path / "local", model=False)
    torch2mlx.stream.convert(f"s3://{BUCKET}/sharded/{single}", tmp_path / "remote", model=False)
    _same_output(tmp_path / "local", tmp_path / "remote")


@pytest.mark.parametrize(
    "src, env, says",
    [
        ("s3://no-such-bucket/sharded", {}, "no bucket 'no-such-bucket' at http://127.0.0.1:"),
        (f"s3://{BUCKET}/shardd", {}, f"no object or prefix 'shardd' in bucket '{BUCKET}' at http://127.0.0.1:"),
        (f"s3://{BUCKET}/sharded/model.safetensors", {}, "no object or prefix 'sharded/model.safetensors'"),
        (
            f"s3://{BUCKET}/sharded",
            {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
            "no AWS credentials found; set credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            f"s3://{BUCKET}/sharded",
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
            "cannot connect to http://127.0.0.1:9; check the endpoint (AWS_ENDPOINT_URL)",
        ),
    ],
    ids=["bucket", "prefix", "key", "no-credentials", "no-server"],
)
def test_cli_errors_are_one_line(s3, tmp_path, src, env, says):
    r = _cli(env, src, str(tmp_path / "out"), "--no-model")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {src}: ") and says in lines[0], r.stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.fixture
def enforcing_auth(s3):
    """The server checks signatures against its IAM users (it has none): any key is refused."""
    endpoint, _ = s3

    def reset(count: str):
        # not a form: the server reads the raw body
        headers = {"Content-Type": "text/plain"}
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), headers=headers)
        urllib.request.urlopen(req).read()

    reset("0")
    try:
        yield
    finally:
        reset("inf")


def test_cli_refused_credentials_are_one_line(s3, enforcing_auth, tmp_path):
    r = _cli({}, f"s3://{BUCKET}/sharded", str(tmp_path / "out"), "--no-model")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: s3://{BUCKET}/sharded: access denied by http://127.0.0.1:"), r.stderr
    assert "check the credentials: AWS_ACCESS_KEY_ID" in lines[0]
