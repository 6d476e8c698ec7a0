"""The models root: paths, manifests, locks, the catalog of models, usage, gc, dedup, adopt."""
