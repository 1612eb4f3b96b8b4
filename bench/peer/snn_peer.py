"""PyTorch eager and spikingjelly references of ccsrp's spiking VGG, for speed comparison (not a test).

Same network as `worker/src/model.rs`: pixels in [0, 1] normalised per channel; every layer is
Conv3x3 (pad 1, no bias) -> BatchNorm2d (eval: running stats) -> multi-step LIF (tau 2, v_th 1,
hard reset to 0, decay_input, sigmoid surrogate alpha 4), then an optional 2x2 average pool; the
first layer's conv+BN runs once on [B, ...] and the same current drives every step (direct
encoding); later layers run the conv once on [T*B, ...]; flatten -> Linear on every step; logits
are the mean over T. Random weights (seeded); the numbers are throughput only.

`--impl pytorch` is plain eager PyTorch (the LIF loop below); `--impl spikingjelly` builds the same
network from spikingjelly 2.0's own multi-step layers (`layer.Conv2d`, `layer.BatchNorm2d`,
`neuron.LIFNode(step_mode="m")` with its default, fastest CPU backend, `layer.AvgPool2d`,
`layer.Linear`), the first layer's conv+BN run once and repeated over T.

Prints one JSON object: forward images/s over N images; one candidate's scoring (every other filter
of the middle layer masked, two full forward passes: the N clean images and the N adversarial
ones, as a user of these frameworks scores a pruned network); PGD-7 images/s (eps 8/255, step 2/255,
random start); one training epoch images/s (SGD lr 0.01 momentum 0.9 wd 5e-4, batch 64, batch
statistics), all in batches of --batch except training.
"""

import argparse
import copy
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


class SjVgg(nn.Module):
    """The same network from spikingjelly's multi-step layers."""

    def __init__(self, arch, timesteps, in_ch=3, size=32, classes=10):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron, surrogate

        self.t = timesteps
        blocks, ch, first = [], in_ch, True
        self.first = None
        for item in arch.split(","):
            if item == "M":
                blocks.append(layer.AvgPool2d(2, step_mode="m"))
                size //= 2
                continue
            width = int(item)
            mode = "s" if first else "m"
            conv_bn = [layer.Conv2d(ch, width, 3, 1, 1, bias=False, step_mode=mode),
                       layer.BatchNorm2d(width, step_mode=mode)]
            if first:
                self.first = nn.Sequential(*conv_bn)
            else:
                blocks += conv_bn
            blocks.append(neuron.LIFNode(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                                         surrogate_function=surrogate.Sigmoid(alpha=4.0),
                                         detach_reset=False, step_mode="m"))
            first, ch = False, width
        self.body = nn.Sequential(*blocks)
        self.flatten = layer.Flatten(step_mode="m")
        self.classifier = layer.Linear(ch * size * size, classes, step_mode="m")
        self.register_buffer("mean", torch.full((1, in_ch, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_ch, 1, 1), 0.25))

    def convs(self):
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, pixels):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        x = self.first((pixels - self.mean) / self.std)
        x = x.unsqueeze(0).repeat(self.t, 1, 1, 1, 1)
        return self.classifier(self.flatten(self.body(x))).mean(0)


def fresh_copy(model):
    """A deep copy (spikingjelly neurons reset first: their state is not copyable)."""
    if isinstance(model, SjVgg):
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
    return copy.deepcopy(model)


def conv_layers(model):
    return list(model.convs) if isinstance(model, SpikingVgg) else model.convs()


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
    p.add_argument("--impl", choices=["pytorch", "spikingjelly"], default="pytorch")
    p.add_argument("--arch", default="32,M,64,M,128,M")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--pgd-images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weight-scale", type=float, default=1.0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cls = SpikingVgg if args.impl == "pytorch" else SjVgg
    model = cls(args.arch, args.timesteps).eval()
    with torch.no_grad():
        for conv in conv_layers(model):
            conv.weight.mul_(args.weight_scale)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=gen).float() / 255
    labels = torch.randint(0, 10, (args.images,), generator=gen)

    def forward_all(net, data):
        with torch.no_grad():
            for i in range(0, len(data), args.batch):
                net(data[i : i + args.batch])

    forward_all(model, images[: args.batch])  # warm-up
    start = time.perf_counter()
    forward_all(model, images)
    forward_s = time.perf_counter() - start

    n_pgd = min(args.pgd_images, args.images)
    adversarial = images.clone()
    start = time.perf_counter()
    for i in range(0, n_pgd, args.batch):
        adv = pgd(model, images[i : i + args.batch], labels[i : i + args.batch], 8 / 255, 2 / 255, 7, gen)
        adversarial[i : i + args.batch] = (adv * 255).round() / 255
    pgd_s = time.perf_counter() - start

    # One candidate: every other filter of the middle layer masked, scored on both shards.
    convs = conv_layers(model)
    layer = len(convs) // 2
    start = time.perf_counter()
    candidate = fresh_copy(model)
    with torch.no_grad():
        w = conv_layers(candidate)[layer].weight
        w[1::2] = 0
    forward_all(candidate, images)
    forward_all(candidate, adversarial)
    candidate_s = time.perf_counter() - start

    trained = fresh_copy(model).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(args.images, generator=gen)
    start = time.perf_counter()
    for i in range(0, args.images, 64):
        idx = order[i : i + 64]
        loss = F.cross_entropy(trained(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - start

    print(json.dumps({
        "impl": "pytorch-eager" if args.impl == "pytorch" else "spikingjelly",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "timesteps": args.timesteps,
        "batch": args.batch,
        "weight_scale": args.weight_scale,
        "images": args.images,
        "forward_images_per_s": args.images / forward_s,
        "candidate_layer": layer,
        "candidate_s": candidate_s,
        "pgd7_images": n_pgd,
        "pgd7_images_per_s": n_pgd / pgd_s,
        "train_images_per_s": args.images / train_s,
    }))


if __name__ == "__main__":
    main()
