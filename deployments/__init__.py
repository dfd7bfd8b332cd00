"""Online path: Ray Serve ingress + one @serve.batch model deployment per model (see app.py)."""
