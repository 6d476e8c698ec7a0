"""The pull command: Hub -> verified folder under the models root."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vmm.cli.app import JsonOpt, NameArg, RootOpt, app, root_of, sigterm_interrupts


@app.command()
def pull(
    name: NameArg,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit sha (same as NAME@REV).",
                                                    metavar="REV", show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    all_files: Annotated[bool, typer.Option("--all-files", help="Also fetch duplicate weight formats "
                                            "(pytorch_model*.bin, consolidated*, original/) and every GGUF.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="No network: succeed only if the model is complete "
                                          "(also HF_HUB_OFFLINE=1).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash every file already on disk (else only files "
                                         "whose size, times, inode or device changed since verified).")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Exit 8 instead of waiting when another vmm holds the model.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Parallel connections.", metavar="N")] = 8,
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Bytes per Range request (e.g. 16MiB).",
                                            metavar="SIZE")] = "16MiB",
    fit: Annotated[bool, typer.Option("--fit", help="Refuse (exit 6, nothing downloaded) a model this host's GPUs "
                                      "cannot serve; planned from the Hub's config and weight headers.")] = False,
    name_as: Annotated[Optional[str], typer.Option("--name", metavar="ORG/NAME", show_default=False,
                       help="oci:// only: the model's name in the root (default: the artifact's Hub id).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="oci:// only: plain HTTP to this registry "
                                           "(loopback registries always may).")] = False,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a model from the Hub into the models root: parallel, resumable, verified.

    NAME may also be oci://REGISTRY/REPO[:TAG|@DIGEST]: a model artifact `vmm push` or
    `vmm export` wrote, pulled from that registry instead of the Hub (docs/oci.md).
    On a host with GPUs, a model that will not fit them is pulled with a warning (--fit refuses it).
    """
    if name.startswith("oci://"):
        from vmm.cli.oci import pull_oci
        from vmm.core.errors import UsageError

        hub_only = [flag for flag, used in (("--revision", revision), ("--include", include), ("--exclude", exclude),
                                            ("--all-files", all_files), ("--offline", offline), ("--verify", verify),
                                            ("--fit", fit), ("--chunk-size", chunk_size != "16MiB")) if used]
        if hub_only:
            raise UsageError("option for Hub pulls only", ", ".join(hub_only), "drop it for an oci:// pull")
        pull_oci(name, root, name_as, insecure, workers, not no_wait, json_out)
        return
    if name_as is not None or insecure:
        from vmm.core.errors import UsageError

        raise UsageError("--name and --insecure are for oci:// pulls", name, "drop them for a Hub pull")
    from vmm import render
    from vmm.core.hub import pull
    from vmm.core.units import parse_size
    from vmm.render.progress import PullProgress

    size = parse_size(chunk_size, "--chunk-size")
    if not offline:
        from vmm.core.serving import fit as fit_mod

        verdict = fit_mod.pull_check(name, revision, strict=fit)
        if verdict is not None and not verdict.fits:
            render.note(f"warning: {name} will not fit this host's GPUs ({verdict.reason})"
                        + (f"; what would fit: {', '.join(verdict.alternatives)}" if verdict.alternatives else ""))

    with sigterm_interrupts(), PullProgress(name) as progress:
        result = pull.download_model_to_path(
            name, root=root_of(root), include=include, exclude=exclude, revision=revision,
            all_files=all_files, offline=True if offline else None, wait=not no_wait,
            workers=workers, chunk_size=size, progress=progress, verify=verify)
    if json_out:
        render.emit_json(result.document())
        return
    what = "up to date" if not result.bytes_downloaded and not result.fetched_files else "pulled"
    if result.repaired:
        what = "repaired"
    rows = [("model", result.name), ("status", what), ("path", result.path),
            ("revision", result.revision), ("files", result.files),
            ("size", render.human_bytes(result.bytes_total)),
            ("downloaded", render.human_bytes(result.bytes_downloaded)),
            ("verified", "yes" if result.verified else "no"),
            ("chat template", (result.chat_template or "-")
             + (" (written by vmm: the repo has none)" if result.chat_template_written else ""))]
    if result.repaired:
        rows.insert(2, ("repaired", ", ".join(result.repaired)))
    render.key_values(rows)
