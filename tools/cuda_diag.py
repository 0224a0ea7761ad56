"""Where does tlbench's CUDA time go?  cudnn.benchmark off/on x NHWC/NCHW, bf16 autocast,
fused Adam, 224 px: the first step (autotuning), steady steps, and the first step at a
new batch shape (what a ragged last batch or an inference batch costs).

    python tools/cuda_diag.py efficientnet_lite0 resnet50   (random weights)
"""

import sys
import time

import torch
import torch.nn.functional as F

import tlbench.plugins.registry as plugin_registry
from tlbench.backbones.weights import WeightsChoice


def timed(work) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(registry, name: str, fmt: torch.memory_format) -> str:
    torch.manual_seed(0)
    model = registry.get("backbones", name).build(WeightsChoice("random"))
    model.set_head(10)
    model = model.cuda().train().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), fused=True)

    def batch(b: int) -> torch.Tensor:
        return torch.randn(b, 3, 224, 224, device="cuda").contiguous(memory_format=fmt)

    def step(b: int) -> None:
        labels = torch.randint(0, 10, (b,), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model.head(model.forward_stages(batch(b))).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def forward(b: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.head(model.forward_stages(batch(b)))

    first = timed(lambda: step(256))
    timed(lambda: step(256))
    steady = timed(lambda: [step(256) for _ in range(5)]) / 5
    new_shape = timed(lambda: step(200))
    model.eval()
    f_first = timed(lambda: forward(512))
    f_steady = timed(lambda: [forward(512) for _ in range(3)]) / 3
    f_new = timed(lambda: forward(464))
    return (
        f"train: first {first:.2f} s, steady {256 / steady:,.0f} img/s, new shape "
        f"{new_shape:.2f} s | forward: first {f_first:.2f} s, steady {512 / f_steady:,.0f} "
        f"img/s, new shape {f_new:.2f} s"
    )


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    registry = plugin_registry.collect(plugin_registry.get_plugin_manager())
    for name in sys.argv[1:]:
        for benchmark in (False, True):  # off first: its runs fill no autotuning cache
            torch.backends.cudnn.benchmark = benchmark
            for fmt, label in ((torch.channels_last, "NHWC"), (torch.contiguous_format, "NCHW")):
                result = measure(registry, name, fmt)
                print(f"{name} benchmark={benchmark} {label}: {result}", flush=True)


if __name__ == "__main__":
    main()
