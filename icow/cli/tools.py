"""`icow infer` (inputs from .npy/.npz files, outputs to files) and `icow models`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from icow.errors import IcowError, InvalidInput


def _client(args: argparse.Namespace) -> Any:
    from icow.client import Client

    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    return Client(url)


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """``file.npz`` (every array, by its name) or ``name=file.npy``."""
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
            inputs[name] = np.load(path, allow_pickle=False)
        elif spec.endswith(".npz"):
            with np.load(spec, allow_pickle=False) as z:
                inputs.update({k: z[k] for k in z.files})
        else:
            raise InvalidInput(f"{spec!r}: give NAME=FILE.npy or FILE.npz")
    return inputs


MAX_FILENAME_BYTES = 255  # NAME_MAX of Linux and macOS file systems


def output_filename(name: str) -> str:
    """The file an output tensor is saved to inside ``--out DIR``: never a path. Output names
    come from the model, so they are percent-encoded (RFC 3986: ``a/b`` -> ``a%2Fb.npy``,
    ``../x`` -> ``%2E.%2Fx.npy``, NUL -> ``%00``; a leading dot too, so no name is hidden or
    ``..``); distinct names give distinct files. A name too long for a file is refused."""
    safe = quote(name, safe="")
    if safe.startswith(".") or not safe:
        safe = "%2E" + safe[1:] if safe else "%"
    filename = safe + ".npy"
    if len(filename.encode()) > MAX_FILENAME_BYTES:
        raise InvalidInput(f"output name {name[:40]!r}... is too long for a file name; use --out FILE.npz")
    return filename


def write_outputs(out: Path, outputs: dict[str, np.ndarray]) -> list[Path]:
    """Save ``outputs`` to ``out``: a ``.npz`` file (names as keys) or a folder with one ``.npy``
    per output (:func:`output_filename`). Returns the files written."""
    if out.suffix == ".npz":
        arrays: dict[str, Any] = dict(outputs)  # numpy's stub types **kwds as the allow_pickle flag
        np.savez(out, **arrays)
        return [out]
    files = {name: out / output_filename(name) for name in outputs}
    out.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        np.save(path, outputs[name], allow_pickle=False)
    return list(files.values())


def cmd_infer(args: argparse.Namespace) -> int:
    if args.resume or args.many or (len(args.inputs) == 1 and Path(args.inputs[0]).is_dir()):
        return _infer_many(args)
    if not args.model or not args.inputs:
        raise InvalidInput("icow infer MODEL INPUTS... (or --resume MANIFEST)")
    inputs = load_inputs(args.inputs)
    with _client(args) as client:
        outputs = client.infer(args.model, inputs, version=args.version, timeout_s=args.timeout or 60.0)
    written = write_outputs(Path(args.out), outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype} {list(arr.shape)}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _infer_many(args: argparse.Namespace) -> int:
    """Many jobs with a progress bar and a manifest of job ids (icow/cli/bulk.py)."""
    from icow.cli import bulk

    if args.resume:
        manifest_path = Path(args.resume)
        m = bulk.Manifest.load(manifest_path)
    else:
        if not args.model or len(args.inputs) != 1:
            raise InvalidInput("icow infer MODEL FOLDER | FILE.npz --many [--chunk K] --out OUT")
        src = Path(args.inputs[0])
        out = Path(args.out if args.out != "outputs" or src.is_dir() else "outputs.npz")
        m = bulk.plan(args.model, args.version, src, out, many=args.many, chunk=args.chunk)
        manifest_path = Path(args.manifest) if args.manifest else bulk.default_manifest(out)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        m.save(manifest_path)  # the job ids are on disk before any job is submitted
    with _client(args) as client:
        return bulk.run(client, m, manifest_path, timeout_s=args.timeout, resume=bool(args.resume))


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "push":
        from icow.cli.ops import cmd_models_push

        if not args.name or not args.push_name:
            raise InvalidInput("icow models push FILE --name MODEL [--version V] --repo DIR|s3://BUCKET/PREFIX")
        return cmd_models_push(
            argparse.Namespace(
                file=args.name, name=args.push_name, version=args.version, repo=args.repo, settings=args.settings
            )
        )
    with _client(args) as client:
        if args.action == "show":
            if not args.name:
                raise InvalidInput("icow models show NAME")
            info = client.model(args.name, args.version)
            doc = {
                "name": info.name,
                "version": info.version,
                "versions": list(info.versions),
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.outputs],
            }
            if args.json:
                print(json.dumps(doc, indent=2))
            else:
                print(f"{info.name} v{info.version} (versions {list(info.versions)})")
                for kind in ("inputs", "outputs"):
                    for t in doc[kind]:
                        print(f"  {kind[:-1]:6} {t['name']:20} {t['datatype']:6} {t['shape']}")
        else:
            models = client.models()
            if args.json:
                print(json.dumps(models))
            else:
                for name, versions in models.items():
                    print(f"{name}\tversions {versions}")
    return 0


def add_commands(sub: Any) -> None:
    i = sub.add_parser("infer", help="run jobs: inputs from .npy/.npz files or a folder, outputs to files")
    i.add_argument("model", nargs="?")
    i.add_argument("inputs", nargs="*", help="NAME=FILE.npy or FILE.npz; or a folder of .npz (one job each)")
    i.add_argument("--version", type=int)
    i.add_argument("--out", default="outputs", help="a folder (one .npy per output) or a .npz file")
    i.add_argument("--timeout", type=float, help="seconds to wait for results (default 60 for one job, none for many)")
    i.add_argument("--many", "--batch-axis", action="store_true", help="one job per --chunk samples of FILE.npz")
    i.add_argument("--chunk", type=int, default=1, help="samples per job with --many")
    i.add_argument("--manifest", help="where to write the job ids (default next to --out)")
    i.add_argument("--resume", metavar="MANIFEST", help="collect (and finish) the jobs of an interrupted run")
    i.add_argument("--redis")
    i.set_defaults(func=cmd_infer)

    m = sub.add_parser("models", help="list models, show one model's signature, or push a new version")
    m.add_argument("action", nargs="?", choices=["list", "show", "push"], default="list")
    m.add_argument("name", nargs="?", help="the model (show), or the .onnx FILE (push)")
    m.add_argument("--name", dest="push_name", help="push: the model's name in the repository")
    m.add_argument("--repo", help="push: the model repository, a folder or s3://bucket/prefix (ICOW_REPO)")
    m.add_argument("--version", type=int)
    m.add_argument("--json", action="store_true")
    m.add_argument("--redis")
    m.set_defaults(func=cmd_models)
