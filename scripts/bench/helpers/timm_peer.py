"""The PyTorch peer of train_step.py: timm backbone + GeM + Linear/BN/SiLU neck +
Sub-center ArcFace head (K x classes x 512) + AdamW, one full training step timed.

Run by train_step.py in a Python that has torch and timm (e.g. /tmp/refvenv, see
tests/fixtures/make_reference_fixtures.py); prints one JSON line.
"""

import argparse
import json
import math
import sys
import time
import types

# PyPI's torchvision is a CUDA build whose ops cannot load beside the CPU torch
# wheel; timm imports torchvision but needs none of its ops here.
for _m in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules[_m] = types.ModuleType(_m)

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Landmark(torch.nn.Module):
    def __init__(self, backbone, num_classes, k, dim):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        c = self.backbone.num_features
        self.p = torch.nn.Parameter(torch.ones(1) * 3.0)
        self.linear = torch.nn.Linear(c, dim)
        self.bn = torch.nn.BatchNorm1d(dim)
        bound = 1.0 / math.sqrt(dim)
        self.centers = torch.nn.Parameter(torch.empty(num_classes, k, dim).uniform_(-bound, bound))

    def forward(self, x):
        f = self.backbone(x)
        f = F.avg_pool2d(f.clamp(min=1e-6).pow(self.p), f.shape[-2:]).pow(1.0 / self.p)
        return F.silu(self.bn(self.linear(f.flatten(1))))


def arcface_loss(emb, centers, labels, margin, scale):
    cos = torch.einsum("nd,ckd->nck", F.normalize(emb), F.normalize(centers, dim=-1))
    cos = cos.amax(dim=2).clamp(-1 + 1e-7, 1 - 1e-7)
    onehot = F.one_hot(labels, cos.shape[1]).bool()
    logits = torch.where(onehot, torch.cos(torch.acos(cos) + margin), cos) * scale
    return F.cross_entropy(logits, labels)


def build_step(
    model_name: str,
    *,
    image_size: int,
    batch_size: int,
    num_classes: int,
    amp: bool,
    channels_last: bool,
    compile: bool = False,
):
    """One full training step of the peer as a function returning the loss
    (`.item()`, so it waits for the device). `compile`: torch.compile the model
    and the loss (the first calls compile)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # As timm's own train.py: cuDNN times each convolution's algorithms for the
    # fixed shapes (as XLA's autotuner does for ours) instead of taking its
    # heuristic's pick; float32 matmuls may use TF32, as XLA's default does on GPUs.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = Landmark(model_name, num_classes, 3, 512).train().to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    forward, loss_fn = model, arcface_loss
    if compile:
        forward, loss_fn = torch.compile(model), torch.compile(arcface_loss)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            emb = forward(x)
        # The margin and softmax stay float32, as in ours.
        loss = loss_fn(emb.float(), model.centers, y, 0.3, 80.0)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device, so the timing is complete

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tf_efficientnet_b0")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--num_classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast (the usual mixed precision on GPU)"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the model and loss")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    step = build_step(
        a.model,
        image_size=a.image_size,
        batch_size=a.batch_size,
        num_classes=a.num_classes,
        amp=a.amp,
        channels_last=a.channels_last,
        compile=a.compile,
    )
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    print(
        json.dumps(
            {
                "peer": f"timm {a.model}",
                "torch": torch.__version__,
                "timm": timm.__version__,
                "threads": torch.get_num_threads(),
                "channels_last": a.channels_last,
                "amp": a.amp,
                "compiled": a.compile,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "step_s_median": round(median, 4),
                "images_per_s": round(a.batch_size / median, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
