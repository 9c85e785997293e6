"""``verify``: re-read source and output tensor by tensor and check the conversion holds.

Checks, in order: every shard's size and hash (xxh3-128, or sha256 in older
manifests; ``sha256`` also computes each shard's sha256) against the manifest; every
shard's safetensors header against the format's rules; the index against the
shards; each source file's size, mtime and inode against those the manifest
recorded when the conversion began (with ``quick`` a difference is a problem:
no value is compared, so an output finished from a changed source would pass);
then (unless ``quick``) every output tensor against its rule applied to its
source, block by block, in the same bounded memory as the conversion.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..core import dtypes
from ..core.entry import TensorEntry
from ..errors import Torch2MLXError, one_line
from ..formats import pickled, remote
from ..formats import safetensors as st_reader
from ..formats.checkpoint import open_checkpoint
from ..formats.data import DataReader
from . import gpt_oss, hashing, prequant
from . import manifest as manifest_mod
from .execute import CHUNK, compute_outputs, plan_tasks
from .manifest import NAME as MANIFEST
from .manifest import Manifest
from .plan import Op, Output
from .resume import changed_source
from .writers.output_dir import BIN_INDEX, INDEX


@dataclass
class VerifyReport:
    out: str
    checked_shards: int = 0
    checked_tensors: int = 0
    sha256: dict[str, str] = field(default_factory=dict)  # shard -> its sha256 (verify --sha256)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Tensors whose values could not be recomputed from the source, and why: OK then covers less.
    unchecked: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "out": self.out,
            "ok": self.ok,
            "shards": self.checked_shards,
            "tensors": self.checked_tensors,
            **({"sha256": self.sha256} if self.sha256 else {}),
            "problems": self.problems,
            "notes": self.notes,
            "not_recomputed": [{"name": n, "why": w} for n, w in self.unchecked],
        }

    def text(self) -> str:
        # Problems quote tensor names from the files: one printable line each, like the report.
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        if self.unchecked:
            status += f"; {len(self.unchecked)} tensor(s) not recomputed (only their hashes, headers and index checked)"
        head = (
            f"verified {self.checked_shards} shard(s), {self.checked_tensors} tensor(s) in {one_line(self.out)}: "
            + status
        )
        by_why: dict[str, list[str]] = {}
        for n, w in self.unchecked:
            by_why.setdefault(w, []).append(n)
        unchecked = [
            f"  not recomputed, {w}: "
            + one_line(", ".join(ns[:10]) + (f" ... and {len(ns) - 10} more" if len(ns) > 10 else ""))
            for w, ns in by_why.items()
        ]
        return "\n".join(
            [head]
            + unchecked
            + [f"  sha256 {d}  {one_line(f)}" for f, d in self.sha256.items()]
            + [f"  note: {one_line(n)}" for n in self.notes]
            + [f"  {one_line(p)}" for p in self.problems[:50]]
            + ([f"  ... and {len(self.problems) - 50} more"] if len(self.problems) > 50 else [])
        )


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except FileNotFoundError:
        raise Torch2MLXError(f"{path}: missing {what} (not a complete torch2mlx output)") from None
    except (OSError, ValueError) as e:
        raise Torch2MLXError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise Torch2MLXError(f"{path}: {what} is not a JSON object")
    return obj


def verify(src, out, *, quick: bool = False, progress=None, allow_globals=(), sha256: bool = False) -> VerifyReport:
    """``allow_globals``: pickle globals whose calls are accepted as inert placeholders (``--allow-global``);
    ``sha256``: also compute every shard's sha256 (``report.sha256``), in the same read as the recorded hash."""
    from ..formats.unpickler import allowing

    with allowing(allow_globals):
        return _verify(src, out, quick=quick, progress=progress, sha256=sha256)


def _verify(src, out, *, quick: bool, progress, sha256: bool = False) -> VerifyReport:
    out = os.fspath(out)
    rep = VerifyReport(out)
    manifest = Manifest.from_dict(_load_json(manifest_mod.path(out), f"manifest {MANIFEST}"))
    if manifest.is_zarr:
        return _verify_zarr(src, out, manifest, rep, quick, progress)
    index_name = BIN_INDEX if manifest.format == "bin" else INDEX  # --to torch --format bin
    index = _load_json(os.path.join(out, index_name), "index " + index_name)
    if not manifest.finished:  # written while a run went on: it lists no tensors
        rep.problems.append(f"{MANIFEST}: says the conversion did not finish (complete: false); rerun it with --resume")
    shards = manifest.shards or {}
    alg = hashing.recorded(manifest.hash)
    if alg not in hashing.ALGORITHMS:
        rep.problems.append(f"{MANIFEST}: shard hash {alg!r} is not one this torch2mlx knows; shards not checked")
    algs = tuple(dict.fromkeys(([alg] if alg in hashing.ALGORITHMS else []) + (["sha256"] if sha256 else [])))
    outputs: dict[str, TensorEntry] = {}
    for file, rec in sorted(shards.items()):
        path = os.path.join(out, file)
        if not os.path.isfile(path):
            rep.problems.append(f"{file}: listed in the manifest but missing")
            continue
        if not isinstance(rec, dict):
            rep.problems.append(f"{file}: its manifest record is not an object")
            continue
        size = os.path.getsize(path)
        if size != rec.get("bytes"):
            rep.problems.append(f"{file}: {size} bytes, manifest says {rec.get('bytes')}")
        digests = hashing.path_digests(path, algs) if algs else {}
        if "sha256" in digests and sha256:
            rep.sha256[file] = digests["sha256"]
        if alg in digests and digests[alg] != rec.get(alg):
            rep.problems.append(
                f"{file}: {alg} {digests[alg][:12]}... differs from the manifest's {str(rec.get(alg))[:12]}..."
            )
        try:
            entries = pickled.read_entries(path)[0] if file.endswith(".bin") else st_reader.read_entries(path)[0]
        except Torch2MLXError as e:
            rep.problems.append(str(e))
            continue
        for entry in entries:
            outputs[entry.name] = entry
        rep.checked_shards += 1
    wm = index.get("weight_map") or {}
    for name, file in wm.items():
        got = outputs.get(name)
        if got is None or os.path.basename(got.path or "") != file:
            rep.problems.append(f"index: {name!r} -> {file}, but that shard does not hold it")
    for name in outputs.keys() - wm.keys():
        rep.problems.append(f"index: {name!r} is in a shard but not in the index")
    total = sum(e.nbytes for e in outputs.values())
    if (index.get("metadata") or {}).get("total_size") != total:
        rep.problems.append(
            f"index: total_size {(index.get('metadata') or {}).get('total_size')} != {total} bytes of tensors"
        )
    _check_source(src, manifest, rep, quick)
    if quick:
        return rep
    if manifest.transform:
        # Only what the transform handed back untouched follows from the source by the plan's rule.
        changed = manifest_mod.transformed(manifest)
        rep.unchecked += [(name, "its values came from the user transform") for name in changed]
        manifest = manifest.without_records(changed)
    fused = [n for n, r in (manifest.tensors or {}).items() if r.get("adapter_module")]
    if fused:  # W + s*B@A: the source alone does not give these values
        adapter = (manifest.options or {}).get("adapter")
        rep.unchecked += [(name, f"fused with the adapter {adapter}") for name in fused]
        manifest = manifest.without_records(fused)
    if manifest.to_torch:
        _verify_reverse(src, manifest, outputs, rep, progress)
    else:
        _verify_values(src, manifest, outputs, rep, progress)
    return rep


def _check_source(src, manifest: Manifest, rep: VerifyReport, quick: bool) -> None:
    recorded = manifest.source_files
    if not isinstance(recorded, dict):
        if quick:
            rep.notes.append(
                f"{MANIFEST} records no source identity: --quick cannot tell whether SRC is the "
                "checkpoint that was converted"
            )
        return
    src = os.fspath(src)
    url = remote.source_url(src)
    changed = remote.changed(url, recorded) if url is not None else changed_source(src, recorded)
    if changed is None:
        return
    path, what = changed
    if quick:
        rep.problems.append(
            f"{path}: changed since this output was made ({what}); --quick compares no "
            "values: run verify without --quick"
        )
    else:
        rep.notes.append(
            f"{path}: changed since this output was made ({what}); values compared with the file as it is now"
        )


def _verify_zarr(src, out: str, manifest: Manifest, rep: VerifyReport, quick: bool, progress) -> VerifyReport:
    """A zarr store: every recorded tensor is an array of its dtype and shape at its path, and (unless quick)
    holds its rule applied to its source. zarr keeps no hashes, so quick checks only the structure."""
    from ..formats import zarr_store

    try:
        entries = zarr_store.read_entries(out)[0]  # refuses a store marked incomplete
    except Torch2MLXError as e:
        rep.problems.append(str(e))
        return rep
    outputs = {e.name: e for e in entries}
    records = manifest.tensors or {}
    for name, rec in records.items():
        got = outputs.get(name)
        if got is None:
            rep.problems.append(f"{name}: in the manifest but no array {rec.get('array')!r} in the store")
        elif got.dtype.name != rec.get("dtype") or list(got.shape) != rec.get("shape"):
            rep.problems.append(
                f"{name}: array is {got.dtype.name}{list(got.shape)}"
                f", manifest says {rec.get('dtype')}{rec.get('shape')}"
            )
    for name in outputs.keys() - records.keys():
        rep.problems.append(f"{name}: an array in the store that the manifest does not list")
    if not quick and not rep.problems:
        _verify_values(src, manifest, outputs, rep, progress)
    elif quick:
        rep.checked_tensors = len(records)
        rep.notes.append("zarr stores keep no hashes: --quick checked arrays, dtypes and shapes, not values")
    return rep


def _ops_from_manifest(records: dict, by_name: dict, problems: list[str]):
    """Rebuild the conversion's ops from manifest records (a quantized weight: three records, one op)."""
    from .transforms import rebuild

    for name, rec in records.items():
        if (rec.get("prequant") or {}).get("lossless"):
            # a repacked GPTQ/AWQ tensor: read as written from the packed source's view (prequant.packed_view)
            if name not in by_name:
                problems.append(f"{name}: not in the source checkpoint's repacked view")
            else:
                yield Op(
                    [by_name[name]],
                    "identity",
                    "prequant",
                    {},
                    [Output(name, dtypes.get(rec["dtype"]), tuple(rec["shape"]))],
                )
            continue
        role = rec.get("role")
        if role in ("scales", "biases"):
            continue  # built with its weight
        srcs = rec["source"] if isinstance(rec["source"], list) else [rec["source"]]
        missing = [s for s in srcs + ([rec["fp8_scale"]] if rec.get("fp8_scale") else []) if s not in by_name]
        if missing:
            problems.append(f"{name}: source {missing[0]!r} is not in the source checkpoint")
            continue
        entries = [by_name[s] for s in srcs]
        names = [name]
        if role == "weight":
            base = name[: -len("weight")]
            affine = (rec.get("quantization") or {}).get("mode", "affine") == "affine"
            names += [base + "scales", base + "biases"] if affine else [base + "scales"]
        outs = []
        for n in names:
            r = records.get(n)
            if r is None:
                problems.append(f"{n}: missing from the manifest")
                break
            outs.append(Output(n, dtypes.get(r["dtype"]), tuple(r["shape"])))
        else:
            op = Op(entries, rec["rule"], rec.get("rule_source", "?"), rec.get("args") or {}, outs)
            if rec.get("gguf"):  # a GGUF block-quantized tensor: repacked, requantized or dequantized
                from .gguf_plan import rebuild as rebuild_gguf

                op.transform = rebuild_gguf(rec, outs)
            elif rec.get("quantization") or rec.get("fp8_scale"):
                op.transform = rebuild(rec, entries[0], by_name)
            yield op


def _verify_values(src, manifest, outputs, rep: VerifyReport, progress) -> None:
    ck = open_checkpoint(src, key=manifest.key())
    mxfp4 = prequant.mxfp4.view(ck)  # the repacked tensors' sources: views of the MXFP4 ones
    if mxfp4 is not None:
        ck = mxfp4[0]
    experts = gpt_oss.view(ck) if mxfp4 is None else None  # likewise: views of gpt-oss's expert tensors
    if experts is not None:
        ck = experts[0]
    found = prequant.detect(ck)
    if found is not None and found.modules:  # the records name the view the conversion read
        from .options import Options

        ck, _ = prequant.packed_view(ck, found, Options.make(**(manifest.options or {})))
    by_name = {e.name: e for e in ck.entries}
    with DataReader() as reader:
        if (manifest.options or {}).get("dequantize"):  # its sources: the quantized weights, dequantized
            from .reverse_plan import with_dequantized

            dt = (manifest.options or {}).get("dtype", "keep")
            ck, _ = with_dequantized(ck, reader, dtypes.get(dt) if dt != "keep" else None)
        by_name = {e.name: e for e in ck.entries}
        _compare_ops(_ops_from_manifest(manifest.tensors or {}, by_name, rep.problems), outputs, reader, rep, progress)


def _verify_reverse(src, manifest, outputs, rep: VerifyReport, progress) -> None:
    """A --to torch output: plan the way back again with the recorded options, compare every tensor."""
    from .options import Options
    from .reverse_plan import plan_reverse

    opts = manifest.options or {}
    ck = open_checkpoint(src, key=manifest.key())
    with DataReader() as side, DataReader() as reader:
        # --to torch never quantizes; older manifests recorded the default group size anyway
        plan = plan_reverse(
            ck,
            Options.make(**{**opts, "q_group_size": None}),
            side,
            model=manifest.model,
            model_kwargs=manifest.model_kwargs,
            use_model=manifest.use_model if manifest.use_model is not None else True,
            fmt=manifest.format if manifest.format is not None else "safetensors",
        ).plan
        _compare_ops(plan.ops, outputs, reader, rep, progress)


def _compare_ops(ops, outputs, reader: DataReader, rep: VerifyReport, progress) -> None:
    for op in ops:
        got = [outputs.get(o.name) for o in op.outputs]
        if any(g is None for g in got):
            rep.problems.append(f"{op.outputs[0].name}: missing from the shards")
            continue
        try:
            why = _compare(op, got, reader)
        except Torch2MLXError as e:  # a chunk of a zarr output that no longer decodes
            why = str(e)
        if why:
            rep.problems.append(f"{op.outputs[0].name}: {why}")
        rep.checked_tensors += len(op.outputs)
        if progress:
            progress(op.nbytes_in)


def _compare(op: Op, got: list, reader: DataReader) -> str | None:
    for o, g in zip(op.outputs, got, strict=True):
        if tuple(g.shape) != o.shape or g.dtype != o.dtype:
            return f"{o.name} is {g.dtype.name}{list(g.shape)}, expected {o.dtype.name}{list(o.shape)}"
    for t in plan_tasks(op, CHUNK):
        if t.copy:
            item = op.outputs[0].dtype.itemsize
            wants = [reader.read_flat(op.sources[0], t.start // item, t.stop // item)]
            haves = [reader.read_flat(got[0], t.start // item, t.stop // item)]
        else:
            wants = compute_outputs(op, reader, t.start, t.stop, t.flat)
            haves = [
                reader.read_flat(g, t.start, t.stop)
                if t.flat
                else (reader.read_rows(g, t.start, t.stop) if g.shape else reader.read_all(g))
                for g in got
            ]
        for o, want, have in zip(op.outputs, wants, haves, strict=True):
            if np.ascontiguousarray(want).tobytes() != np.ascontiguousarray(have).tobytes():
                what = f"rule {op.rule}" + (" + " + ", ".join(sorted(op.transform.info())) if op.transform else "")
                return f"{o.name} differs from {what} applied to {'+'.join(e.name for e in op.sources)}"
    return None
