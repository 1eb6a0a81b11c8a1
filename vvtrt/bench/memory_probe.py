"""What one bench process holds in memory: over its whole life, and from the end of its load.

Loading can need more than serving: a quantized work dir holds the float weights next to the 8-bit ones until
every runner is built, then frees them. The whole-life peak says what loading needs; the after-load peak what
the process holds while it serves (weights in place, CUDA graphs captured, KV cache and activations). Each comes
from torch's allocator (its own tensors only: ONNX Runtime and TensorRT allocate outside it) and from NVML's
figure for this pid (`vvtrt.reports.telemetry.ProcessMemorySampler`, polled from before CUDA is touched).
Off CUDA every GPU figure is None, with a status saying why; the host's peak RSS is always measured.
"""
from __future__ import annotations

import torch

CPU_STATUS = "not measured: a CPU run (no GPU memory)"


class MemoryProbe:
    """Start it before the process touches CUDA; `mark_loaded()` once the model and its runners are in place;
    `fields()` for the report's ``memory`` block; `stop()` at the end."""

    def __init__(self, device: str, device_index: int = 0):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.sampler = None
        self._before_mark: tuple[int, int] | None = None  # torch's allocator peaks (allocated, reserved) at the mark
        if self.cuda:
            from vvtrt.reports.telemetry import ProcessMemorySampler

            self.sampler = ProcessMemorySampler(device_index=device_index).start()

    def mark_loaded(self) -> None:
        """The load is over: the after-load peaks start from what the process holds now."""
        if not self.cuda:
            return
        torch.cuda.synchronize(self.device)
        self._before_mark = (torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        self.sampler.mark_loaded()

    def fields(self) -> dict:
        from vvtrt.reports.telemetry import peak_rss_bytes

        if not self.cuda:
            return {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "after_load_peak_allocated_bytes": None,
                    "nvml_process_peak_bytes": None, "nvml_process_after_load_peak_bytes": None,
                    "nvml_peak_used_bytes": None, "nvml_device_baseline_bytes": None,
                    "nvml_process_status": CPU_STATUS, "host_peak_rss_bytes": peak_rss_bytes()}
        alloc, reserved = torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)
        before = self._before_mark or (0, 0)
        return {"peak_allocated_bytes": max(alloc, before[0]), "peak_reserved_bytes": max(reserved, before[1]),
                "after_load_peak_allocated_bytes": alloc if self._before_mark else None, **self.sampler.snapshot()}

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
