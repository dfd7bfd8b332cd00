"""twinfer: one image model, two paths (Ray Serve online, Ray Data offline)."""
