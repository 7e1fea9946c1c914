"""Peak memory of each approach in a prompt-vs-fine-tune comparison.

Resident memory comes from Linux's high-water mark (``VmHWM`` in ``/proc/self/status``),
reset before each approach (``/proc/self/clear_refs``); on CUDA, allocated memory from
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc


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


def release_freed_memory() -> None:
    """Free what the previous approach left and hand it back to the system, so each mark starts from live memory.

    Its training model and trainer live in reference cycles; and glibc keeps freed heap memory
    in the process (resident) until asked to trim it.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, or no way to ask
        pass


def status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
