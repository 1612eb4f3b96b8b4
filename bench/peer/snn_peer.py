"""PyTorch reference of ccsrp's spiking VGG, for speed comparison (not a test).

Same network as `worker/src/model.rs`: pixels in [0, 1] normalised per channel; every layer is
Conv3x3 (pad 1, no bias) -> BatchNorm2d (eval: running stats) -> multi-step LIF (tau 2, v_th 1,
hard reset to 0, decay_input, sigmoid surrogate alpha 4), then an optional 2x2 average pool; the
first layer's conv+BN runs once on [B, ...] and the same current drives every step (direct
encoding); later layers run the conv once on [T*B, ...]; flatten -> Linear on every step; logits
are the mean over T. Random weights (seeded); the numbers are throughput only.

Prints one JSON object: forward images/s over N images and PGD-7 images/s (eps 8/255, step 2/255,
random start), both in batches of --batch.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpikeFn(torch.autograd.Function):
    """Heaviside forward, sigmoid surrogate backward: ds/dh = alpha * sg * (1 - sg)."""

    @staticmethod
    def forward(ctx, h, alpha):
        ctx.save_for_backward(h)
        ctx.alpha = alpha
        return (h >= 0).to(h.dtype)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * h)
        return grad * ctx.alpha * sg * (1 - sg), None


def lif(current, timesteps, constant, tau=2.0, v_th=1.0, v_reset=0.0, alpha=4.0):
    """Multi-step LIF over step-major [T*B, ...] currents (or one [B, ...] current if constant)."""
    steps = [current] * timesteps if constant else current.chunk(timesteps, 0)
    v = torch.full_like(steps[0], v_reset)
    out = []
    for x in steps:
        h = v + (x - (v - v_reset)) / tau
        s = SpikeFn.apply(h - v_th, alpha)
        v = h * (1 - s) + v_reset * s
        out.append(s)
    return torch.cat(out, 0)


class SpikingVgg(nn.Module):
    def __init__(self, arch, timesteps, in_ch=3, size=32, classes=10):
        super().__init__()
        self.t = timesteps
        self.convs, self.bns, self.pools = nn.ModuleList(), nn.ModuleList(), []
        ch = in_ch
        for item in arch.split(","):
            if item == "M":
                self.pools[-1] = True
                size //= 2
                continue
            width = int(item)
            self.convs.append(nn.Conv2d(ch, width, 3, 1, 1, bias=False))
            self.bns.append(nn.BatchNorm2d(width))
            self.pools.append(False)
            ch = width
        self.classifier = nn.Linear(ch * size * size, classes)
        self.register_buffer("mean", torch.full((1, in_ch, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_ch, 1, 1), 0.25))

    def forward(self, pixels):
        x = (pixels - self.mean) / self.std
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = lif(bn(conv(x)), self.t, constant=(i == 0))
            if self.pools[i]:
                x = F.avg_pool2d(x, 2)
        logits = self.classifier(x.flatten(1))
        return logits.view(self.t, -1, logits.shape[-1]).mean(0)


def pgd(model, x, y, eps, step, steps, generator):
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    adv = torch.max(torch.min(x + noise, hi), lo)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.max(torch.min(adv + step * grad.sign(), hi), lo)
    return adv.detach()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="32,M,64,M,128,M")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--pgd-images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SpikingVgg(args.arch, args.timesteps).eval()
    images = torch.rand((args.images, 3, 32, 32), generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)

    with torch.no_grad():
        model(images[: args.batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, args.images, args.batch):
            model(images[i : i + args.batch])
        forward_s = time.perf_counter() - start

    n_pgd = min(args.pgd_images, args.images)
    start = time.perf_counter()
    for i in range(0, n_pgd, args.batch):
        pgd(model, images[i : i + args.batch], labels[i : i + args.batch], 8 / 255, 2 / 255, 7, gen)
    pgd_s = time.perf_counter() - start

    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "timesteps": args.timesteps,
        "batch": args.batch,
        "forward_images": args.images,
        "forward_images_per_s": args.images / forward_s,
        "pgd7_images": n_pgd,
        "pgd7_images_per_s": n_pgd / pgd_s,
    }))


if __name__ == "__main__":
    main()
