"""Plan: what every output tensor is, where it comes from and where it goes. No data is read.

A plan is pure data: ops (sources -> rule -> outputs), shards (which outputs,
at which byte offsets, with the header bytes already rendered) and the notes
the report shows. ``--dry-run`` prints it; execution only follows it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Protocol

from ..core.dtypes import DType
from ..core.entry import TensorEntry
from ..formats.data import DataReader
from . import manifest

SHARD_METADATA = {"format": "mlx"}
_json_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) writes for a str


# slots: a checkpoint of 100,000 tensors holds as many entries, ops and outputs.
@dataclass(slots=True)
class Output:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    shard: int = -1
    offset: int = -1  # byte offset inside the shard's data buffer

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Transform(Protocol):
    """Replaces an op's final cast: block -> one array per output (quantization, fp8 scaling)."""

    def __call__(self, block, op: Op, start: int, reader, src: DType | None = None) -> list: ...

    def info(self) -> dict: ...


@dataclass(slots=True)
class Op:
    sources: list[TensorEntry]
    rule: str
    rule_source: str  # model | user | inferred | default
    args: dict
    outputs: list[Output]
    transform: Transform | None = None
    transform_info: dict | None = None

    @property
    def source_dtype(self) -> DType:
        return self.sources[0].dtype

    @property
    def nbytes_in(self) -> int:
        if len(self.sources) == 1 and self.transform is None:  # most ops, asked for several times a run
            return self.sources[0].nbytes_read
        return sum(e.nbytes_read for e in self.sources) + getattr(self.transform, "nbytes_read", 0)

    @property
    def nbytes_out(self) -> int:
        return self.outputs[0].nbytes if len(self.outputs) == 1 else sum(o.nbytes for o in self.outputs)

    @property
    def passthrough(self) -> bool:
        """Bytes can be copied as they are (by the kernel, when they live in a file)."""
        (src,) = self.sources if len(self.sources) == 1 else (None,)
        return (
            src is not None
            and self.rule == "identity"
            and len(self.outputs) == 1
            and self.transform is None
            and src.loader is None
            and self.outputs[0].dtype == src.dtype
            and src.contiguous
            and (src.byteorder == "little" or src.dtype.itemsize == 1)
        )


@dataclass
class Shard:
    file: str
    outputs: list[Output]
    header: bytes = b""

    @property
    def data_size(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    @property
    def size(self) -> int:
        return len(self.header) + self.data_size


@dataclass
class Plan:
    ops: list[Op]
    shards: list[Shard]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source name, why)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quantization: dict | None = None  # the config block mlx-lm reads, when quantizing
    target: str | None = None  # the MLX tool a forward run's output is laid out for (stream/targets)
    fuses: list = field(default_factory=list)  # an adapter's Fuse stages (adapters.fuse), for the report
    fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)  # resume.fingerprint's
    # serves sources read through another reader (dequantized MLX weights); closed with ``close``
    side_reader: DataReader | None = field(default=None, init=False, repr=False, compare=False)

    def close(self) -> None:
        if self.side_reader is not None:
            self.side_reader.close()

    @property
    def nbytes_in(self) -> int:
        return sum(op.nbytes_in for op in self.ops)

    @property
    def nbytes_out(self) -> int:
        return sum(s.data_size for s in self.shards)

    def rules_by_source(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.rule_source] = counts.get(op.rule_source, 0) + len(op.outputs)
        return dict(sorted(counts.items()))

    def tensor_records(self) -> dict[str, dict]:
        """Manifest records, one per output tensor."""
        return manifest.tensor_records(self)

    def to_dict(self) -> dict:
        return {
            "tensors": self.tensor_records(),
            "shards": {s.file: {"bytes": s.size, "tensors": len(s.outputs)} for s in self.shards},
            "dropped": [{"source": n, "why": w} for n, w in self.dropped],
            "warnings": self.warnings,
            "notes": self.notes,
            "bytes_in": self.nbytes_in,
            "bytes_out": self.nbytes_out,
            "rules_by_source": self.rules_by_source(),
        }


def shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def render_header(outputs: list[Output], metadata: dict | None = None) -> bytes:
    """safetensors header: compact JSON padded with spaces to a multiple of 8 bytes.

    Output names are unique (the planner and ShardWriter refuse a second tensor of a name)."""
    meta = dict(metadata if metadata is not None else SHARD_METADATA)
    if any(o.name == "__metadata__" or o.dtype.safetensors is None for o in outputs):
        # the rare cases (a name replacing the metadata, a dtype with no code): as a dict does
        head = {"__metadata__": meta}
        for o in outputs:
            head[o.name] = {
                "dtype": o.dtype.safetensors,
                "shape": list(o.shape),
                "data_offsets": [o.offset, o.offset + o.nbytes],
            }
        text = json.dumps(head, separators=(",", ":"), ensure_ascii=False)
    else:
        # The text json.dumps gives for that dict, one record at a time: a 100,000-tensor
        # header without a dict and three lists per tensor.
        parts = [json.dumps({"__metadata__": meta}, separators=(",", ":"), ensure_ascii=False)[:-1]]
        for o in outputs:
            parts.append(
                f'{_json_str(o.name)}:{{"dtype":"{o.dtype.safetensors}",'
                f'"shape":[{",".join(map(str, o.shape))}],"data_offsets":[{o.offset},{o.offset + o.nbytes}]}}'
            )
        text = ",".join(parts) + "}"
    raw = text.encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def layout_shard(outputs: list[Output]) -> list[Output]:
    """Order a shard's tensors widest dtype first, then by name, so each starts aligned."""
    ordered = sorted(outputs, key=lambda o: (-o.dtype.itemsize, o.name))
    pos = 0
    for o in ordered:
        o.offset = pos
        pos += o.nbytes
    return ordered


def assign_shards(ops: list[Op], max_size: int, metadata: dict | None = None) -> list[Shard]:
    """Cut the outputs into shards of at most ``max_size`` bytes (an op's outputs stay together)."""
    groups: list[list[Output]] = [[]]
    size = 0
    for op in ops:
        n = op.nbytes_out
        if groups[-1] and size + n > max_size:
            groups.append([])
            size = 0
        groups[-1].extend(op.outputs)
        size += n
    shards = []
    for i, outs in enumerate(groups):
        for o in outs:
            o.shard = i
        ordered = layout_shard(outs)
        shards.append(Shard(shard_name(i, len(groups)), ordered, render_header(ordered, metadata)))
    return shards
