"""Models as OCI artifacts: `push`, `export`, and the `pull oci://` / `import LAYOUT` paths
that `pull` and `import` dispatch to (docs/oci.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vmm.cli.app import JsonOpt, NameArg, RootOpt, app, root_of, sigterm_interrupts

InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Speak plain HTTP to this registry (loopback "
                                           "registries always may; also VMM_INSECURE_REGISTRIES).")]


@app.command("push")
def push_cmd(
    name: NameArg,
    target: Annotated[str, typer.Argument(help="REGISTRY/REPO[:TAG] (tag default: latest).", metavar="REGISTRY/REPO[:TAG]",
                                          show_default=False)],
    insecure: InsecureOpt = False,
    workers: Annotated[int, typer.Option("--workers", help="Parallel uploads.", metavar="N")] = 8,
    mount_from: Annotated[Optional[str], typer.Option("--mount-from", metavar="REPO", show_default=False,
                          help="Ask the registry to mount blobs it holds in this repository of the same "
                               "registry instead of uploading them.")] = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Push a managed model to an OCI registry as a CNCF ModelPack artifact: one raw layer per file.

    Layer digests are the files' sha256 from the manifest (files changed since verified are
    hashed again first); blobs the registry already holds are skipped, so a rerun of an
    interrupted push sends only what is missing. Credentials: podman/docker auth files.
    """
    from vmm import render
    from vmm.core.oci import ops

    with sigterm_interrupts():
        result = ops.push(root_of(root), name, target, insecure=insecure, workers=workers, mount_from=mount_from)
    if json_out:
        render.emit_json(result)
        return
    render.key_values([("model", result.name), ("pushed", result.reference), ("files", result.files),
                       ("size", render.human_bytes(result.bytes_total)),
                       ("uploaded", f"{result.layers_uploaded} blobs, {render.human_bytes(result.bytes_uploaded)}"),
                       ("already there", f"{result.layers_skipped} blobs"
                        + (f", {result.layers_mounted} mounted" if result.layers_mounted else ""))])


@app.command("export")
def export_cmd(
    name: NameArg,
    target: Annotated[Path, typer.Argument(help="A new directory, or FILE.tar.", metavar="DIR|FILE.tar",
                                           show_default=False)],
    tag: Annotated[Optional[str], typer.Option("--tag", help="The image's ref name in index.json (default latest).",
                                               metavar="TAG", show_default=False)] = None,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a managed model as an OCI image layout (a directory, or one tar file).

    `skopeo copy oci:DIR docker://...` pushes the directory form; `vmm import DIR|FILE.tar`
    installs it on another host, every blob verified.
    """
    from vmm import render
    from vmm.core.oci import ops

    result = ops.export(root_of(root), name, target, tag=tag)
    if json_out:
        render.emit_json(result)
        return
    render.result(f"exported {result.name} to {result.path} ({result.format}, tag {result.tag}): "
                     f"{result.files} files, {render.human_bytes(result.bytes_total)}, {result.digest}")


def pull_oci(target: str, root: Path | None, name: str | None, insecure: bool, workers: int, wait: bool,
             json_out: bool) -> None:
    """`vmm pull oci://...` (called by the pull command)."""
    from vmm import render
    from vmm.core.oci import ops

    from vmm.render.progress import PullProgress

    with sigterm_interrupts(), PullProgress(target) as progress:
        result = ops.pull(root_of(root), target, name=name, insecure=insecure, workers=workers, wait=wait,
                          progress=progress)
    if json_out:
        render.emit_json(result)
        return
    render.key_values([("model", result.name), ("status", "pulled" if result.bytes_downloaded or
                        result.kept_files < result.files else "up to date"),
                       ("path", result.path), ("from", result.reference), ("revision", result.revision),
                       ("files", result.files), ("size", render.human_bytes(result.bytes_total)),
                       ("downloaded", render.human_bytes(result.bytes_downloaded)), ("verified", "yes"),
                       ("chat template", result.chat_template or "-")])


def import_oci(source: str, root: Path | None, name: str | None, tag: str | None, json_out: bool) -> None:
    """`vmm import DIR|FILE.tar` of an OCI layout (called by the import command)."""
    from vmm import render
    from vmm.core.oci import ops

    from vmm.render.progress import PullProgress

    with sigterm_interrupts(), PullProgress(str(source)) as progress:
        result = ops.import_layout(root_of(root), source, name=name, tag=tag, progress=progress)
    if json_out:
        render.emit_json(result)
        return
    render.result(f"imported {result.name} from {result.source} ({result.kind}): {result.files} files, "
                     f"{render.human_bytes(result.bytes_total)}, {result.copied} copied, "
                     f"{result.kept_files} already present, verified")
