"""Commands that manage the root's storage: dedup, gc, pin, unpin, import."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vmm.cli.app import JsonOpt, NameArg, RootOpt, app, confirm_or_refuse, refuse_without_terminal, root_of


@app.command("dedup")
def dedup_cmd(root: RootOpt = None, json_out: JsonOpt = False,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be linked; change nothing.")] = False) -> None:
    """Store identical files once: hardlink copies across the models of the root.

    Content is matched by sha256 (from manifests; hand-made directories are hashed when
    another file has the same size) and the kept copy is re-hashed first. Each file is
    replaced atomically; locked models (pulling, serving) and files on another filesystem
    are skipped and listed. Deleting one model later never damages another.
    """
    from vmm import render
    from vmm.core.store import dedup

    report = dedup.dedup(root_of(root), dry_run=dry_run)
    for skip in report.skipped:
        render.note(f"skipped {skip.name}: {skip.reason}")
    if json_out:
        render.emit_json(report)
        return
    if report.groups:
        render.table(None, ["SHA256", "SIZE", "COPIES", "LINKED", "SAVED", "FILES"], [
            [g.sha256[:12], render.human_bytes(g.size_bytes), len(g.files), g.linked,
             render.human_bytes(g.bytes_saved), ", ".join(g.files)] for g in report.groups])
    verb = "would save" if dry_run else "saved"
    render.result(f"{verb} {render.human_bytes(report.bytes_saved)} ({report.bytes_saved} bytes) by "
                     f"linking {report.linked} files")


@app.command("gc")
def gc_cmd(root: RootOpt = None, json_out: JsonOpt = False,
           keep_under: Annotated[Optional[str], typer.Option("--keep-under", metavar="SIZE",
               help="Remove least recently used models until the root's model bytes fit (e.g. 500GB, 1.5TiB).",
               show_default=False)] = None,
           unused_for: Annotated[Optional[str], typer.Option("--unused-for", metavar="DURATION",
               help="Remove models not used for this long (e.g. 30d, 12h, 2w).", show_default=False)] = None,
           partials_older_than: Annotated[str, typer.Option("--partials-older-than", metavar="DURATION",
               help="Remove partial downloads untouched for this long.")] = "24h",
           dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking (required when stdin is not a terminal).")] = False) -> None:
    """Remove least recently used models and stale partial downloads.

    Last use is the manifest's last-used time (pull, serve, inspect), else the pull time,
    else the directory's mtime. Pinned (`vmm pin`) and locked (pulling, serving) models are
    never removed. Files hardlinked into other models (`vmm dedup`) free nothing until their
    last name goes; the report counts only bytes really freed. Without --yes on a terminal
    it asks; without a terminal it refuses (exit 2) unless --yes or --dry-run. What it
    removes is exactly the list it showed: a model pinned, used or locked since is kept.
    """
    from vmm.core.store import gc

    keep = gc.parse_size(keep_under) if keep_under is not None else None
    unused = gc.parse_duration(unused_for) if unused_for is not None else None
    partials = gc.parse_duration(partials_older_than)
    models_root = root_of(root)
    hint = "pass --yes, or --dry-run to see what would happen"
    if not dry_run:
        refuse_without_terminal(yes, "remove models", str(models_root), hint)
    planned = gc.plan(models_root, keep, unused, partials)
    if dry_run or planned.empty:
        _print_gc(planned.report, json_out)
        return
    shown = planned.report
    confirm_or_refuse(f"Remove {len(shown.removed)} model(s) and {len(shown.partials)} partial file(s) "
                      f"from {models_root}: {', '.join(m.name for m in shown.removed) or '-'}?",
                      yes, "remove models", str(models_root), hint)
    _print_gc(gc.apply(planned), json_out)


def _print_gc(report, json_out: bool) -> None:
    from vmm import render

    for skip in report.skipped:
        render.note(f"kept {skip.name}: {skip.reason}")
    if not report.fits:
        render.note(f"warning: the root still holds {render.human_bytes(report.root_bytes_after)}, over "
                    f"--keep-under {render.human_bytes(report.keep_under_bytes)}: the rest is pinned or locked")
    if json_out:
        render.emit_json(report)
        return
    verb = "would remove" if report.dry_run else "removed"
    for m in report.removed:
        shared = "" if m.bytes_freed >= m.size_bytes else f", {render.human_bytes(m.bytes_freed)} freed (rest shared)"
        render.result(f"{verb} {m.name} ({render.human_bytes(m.size_bytes)}{shared}; {m.reason}; "
                         f"last used {render.ago(m.last_used_epoch)} by {m.last_used_source})")
    for p in report.partials:
        render.result(f"{verb} partial {p.path} ({render.human_bytes(p.size_bytes)}, "
                         f"{render.human_age(p.age_s)})")
    render.result(f"{'would free' if report.dry_run else 'freed'} {render.human_bytes(report.bytes_freed)} "
                     f"({report.bytes_freed} bytes); root {render.human_bytes(report.root_bytes_before)} -> "
                     f"{render.human_bytes(report.root_bytes_after)}")


@app.command("pin")
def pin_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Keep a model out of `vmm gc`, whatever its age or size (hand-made directories too)."""
    from vmm import render
    from vmm.core.store import gc

    result = gc.pin(root_of(root), name)
    render.emit_json(result) if json_out else render.result(f"pinned {result.name}")


@app.command("unpin")
def unpin_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Let `vmm gc` remove a model again."""
    from vmm import render
    from vmm.core.store import gc

    result = gc.unpin(root_of(root), name)
    render.emit_json(result) if json_out else render.result(f"unpinned {result.name}")


@app.command("import")
def import_cmd(source: Annotated[str, typer.Argument(
                   help="A model directory, an HF cache entry (models--org--name or its snapshots/<sha>), "
                        "org/name[@REVISION] looked up in HF_HUB_CACHE, or an OCI layout (DIR or FILE.tar "
                        "from `vmm export`).", metavar="PATH_OR_CACHE_ENTRY",
                   show_default=False)],
               root: RootOpt = None, json_out: JsonOpt = False,
               name: Annotated[Optional[str], typer.Option("--name", metavar="ORG/NAME",
                   help="Name in the root (default: from the cache entry or the directory name).",
                   show_default=False)] = None,
               move: Annotated[bool, typer.Option("--move", help="Remove the source once adopted (a directory on "
                                                  "the same filesystem is renamed; a cache entry is deleted "
                                                  "whole, every revision).")] = False,
               force: Annotated[bool, typer.Option("--force", help="Replace a model of the same name.")] = False,
               tag: Annotated[Optional[str], typer.Option("--tag", metavar="TAG", show_default=False,
                   help="OCI layouts only: which image of index.json (needed when it holds several).")] = None) -> None:
    """Adopt an existing model directory or Hugging Face cache entry into the root.

    An OCI image layout (a directory with oci-layout, or a tar of one, as `vmm export`
    writes) is installed instead: every blob verified against its digest, the manifest
    written last, so `vmm check` passes with no network (docs/oci.md).

    Every file is hashed (cache blobs must match their sha256 / git sha1 names) and
    hardlinked into <root>/org--name (copied across filesystems), with a manifest, so the
    model is managed like a pulled one. Nothing is downloaded. A name already in the root
    exits 2 unless --force.
    """
    from pathlib import Path

    from vmm.core.oci import layout

    if layout.is_layout(Path(source).expanduser()):
        from vmm.cli.oci import import_oci
        from vmm.core.errors import UsageError

        if move:
            raise UsageError("--move is for directories and HF cache entries", source, "drop it for an OCI layout")
        import_oci(source, root, name, tag, json_out)
        return
    if tag is not None:
        from vmm.core.errors import UsageError

        raise UsageError("--tag is for OCI layouts", source, "drop it")
    from vmm import render
    from vmm.core.store import adopt

    result = adopt.import_model(root_of(root), source, name=name, move=move, force=force)
    if json_out:
        render.emit_json(result)
        return
    how = f"{result.linked} linked, {result.copied} copied" if (result.linked or result.copied) else \
        ("moved" if result.moved else "adopted in place")
    render.result(f"imported {result.name} from {result.source} ({result.kind}): {result.files} files, "
                     f"{render.human_bytes(result.bytes_total)}, {how}, verified")
