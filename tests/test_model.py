"""Encoders, the momentum update, split BN and the key queue."""

import torch
import torch.nn.functional as F

from study.method.model import ConvNet, Encoder, KeyQueue, MoCo, SplitBatchNorm, build_backbone, split_batchnorm


def test_backbones_shapes():
    x = torch.randn(4, 1, 16, 16)
    for name in ("convnet", "resnet18"):
        net = build_backbone(name, 1, [8, 16], 16)
        assert net(x).shape == (4, net.out_dim)
    enc = Encoder(ConvNet(1, [8, 16]), feat_dim=32, hidden_dim=None)
    assert enc(x).shape == (4, 32)


def test_momentum_update_is_ema():
    torch.manual_seed(0)
    moco = MoCo(Encoder(ConvNet(1, [4]), 8, None), momentum=0.9)
    q0 = [p.detach().clone() for p in moco.encoder_q.parameters()]
    for p in moco.encoder_q.parameters():
        p.data.add_(1.0)
    moco.momentum_update()
    for pk, p0 in zip(moco.encoder_k.parameters(), q0):
        # k was a copy of q0; q is now q0 + 1: k = 0.9 q0 + 0.1 (q0 + 1)
        torch.testing.assert_close(pk, p0 + 0.1)
        assert not pk.requires_grad


def test_queue_wraps_around():
    q = KeyQueue(5, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(q.keys.norm(dim=1), torch.ones(5))
    a = F.normalize(torch.arange(1, 9, dtype=torch.float).view(4, 2), dim=1)
    q.enqueue(a[:3])
    assert q.ptr == 3
    q.enqueue(a[3:].repeat(3, 1))  # 3 rows: two at the end, one wraps to row 0
    assert q.ptr == 1
    torch.testing.assert_close(q.keys[:3], torch.stack([a[3], a[1], a[2]]))
    torch.testing.assert_close(q.keys[3:], a[3:].repeat(2, 1))
    sd = q.state_dict()
    q2 = KeyQueue(5, 2)
    q2.load_state_dict(sd)
    assert q2.ptr == 1 and torch.equal(q2.keys, q.keys)


def test_split_bn_equals_bn_per_chunk():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    bn = torch.nn.BatchNorm2d(3)
    split = SplitBatchNorm(3, 2)
    y = split(x)
    expect = torch.cat([bn(x[:4]), torch.nn.BatchNorm2d(3)(x[4:])])
    torch.testing.assert_close(y, expect)
    net = split_batchnorm(ConvNet(1, [4, 8]), 2)
    assert sum(isinstance(m, SplitBatchNorm) for m in net.modules()) == 3
