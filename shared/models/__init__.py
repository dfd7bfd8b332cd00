"""One builder module per architecture; each exposes ``build(weights, options) -> nn.Module``."""
