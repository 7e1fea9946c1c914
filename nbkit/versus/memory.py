"""Peak memory of each approach in a prompt-vs-fine-tune comparison.

Resident memory comes from Linux's high-water mark (``VmHWM`` in ``/proc/self/status``),
reset before each approach (``/proc/self/clear_refs``); on CUDA, allocated memory from
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

# the process's memory, read and released as a training run does it
from ..memory import release_freed_memory, status_kib


class PeakMemory:
    """Peak memory of one stretch of work in this process: resident (Linux) and, on CUDA, allocated."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        release_freed_memory()
        self.resettable = reset_high_water_mark()
        rss = status_kib("VmRSS")
        self.baseline = round(rss / 1024) if rss is not None and self.resettable else None  # MiB before any approach

    def reset(self) -> None:
        release_freed_memory()
        self.resettable = reset_high_water_mark()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> dict:
        peak = status_kib("VmHWM") if self.resettable else None
        out = {"peak_memory_mb": round(peak / 1024) if peak is not None else None}
        if self.cuda:
            import torch

            out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
        return out


def reset_high_water_mark() -> bool:
    """Reset the process's peak RSS to its current RSS (``man proc``: clear_refs 5); whether it worked.

    Some kernels and sandboxes accept the write and ignore it: the mark must come down to the
    resident size, or the peak would belong to an earlier approach.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, rss = status_kib("VmHWM"), status_kib("VmRSS")
    return peak is not None and rss is not None and peak - rss <= 8 * 1024
