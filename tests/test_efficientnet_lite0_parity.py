"""The embedded weights in our chosen architecture (efficientnet-lite-pytorch) give the same logits
as an independent implementation, timm's ``tf_efficientnet_lite0``, after a key remap."""

import numpy as np
import timm  # a test dependency (pyproject [test])
import torch

from shared import ModelConfig, ModelWrapper
from shared.models.efficientnet_lite0 import embedded_weights_path
from twinfer.samples import encode, sample_array


def timm_lite0_with_embedded_weights() -> torch.nn.Module:
    source = torch.load(embedded_weights_path(), weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    target = model.state_dict()
    # Both register the same 296 tensors in the same order under different names and nesting
    # (_blocks.N._depthwise_conv -> blocks.S.I.conv_dw ...): map by position, check every shape.
    assert len(source) == len(target)
    remap = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        assert tensor.shape == expected.shape, (src_key, dst_key)
        remap[dst_key] = tensor
    model.load_state_dict(remap)
    return model


def test_logits_match_timm_tf_efficientnet_lite0():
    ours = ModelWrapper(ModelConfig(channels_last=False))
    reference = timm_lite0_with_embedded_weights()
    batch = np.stack([ours.load(encode(sample_array(n))).pixels for n in ("chelsea", "coffee", "rocket", "astronaut")])
    x = torch.addcmul(ours.runner.shift, torch.from_numpy(batch).float(), ours.runner.scale)
    with torch.inference_mode():
        a, b = ours.model(x), reference(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    assert a.argmax(1).tolist() == b.argmax(1).tolist()
    assert [ours.labels[i] for i in a.argmax(1).tolist()[:3]] == ["Egyptian cat", "espresso", "missile"]
