"""twinfer's offline path: Ray Data backfills (and their evaluation) over the shared model wrapper."""
