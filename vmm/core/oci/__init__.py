"""Models as OCI artifacts: push/pull to registries, export/import OCI image layouts (docs/oci.md)."""
