"""GPU telemetry through NVML (`nvidia-ml-py`): utilisation, memory, temperature, power and SM clock of
every visible GPU. Without a driver or GPU, `GpuMonitor.available` is False and `read()` returns []."""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    sm_clock_mhz: float


class GpuMonitor:
    def __init__(self):
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # no driver, no GPU: telemetry is simply absent
            log.info("NVML unavailable (%s): no GPU telemetry", exc)
            self._nvml = None

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> list[GpuSample]:
        out = []
        for i, h in enumerate(self.handles):
            try:
                out.append(self._sample(i, h))
            except Exception as exc:  # one failed query must not take the server's metrics down
                log.debug("NVML read of GPU %d failed: %s", i, exc)
        return out

    def _sample(self, i: int, h) -> GpuSample:
        n = self._nvml
        name = n.nvmlDeviceGetName(h)
        mem = n.nvmlDeviceGetMemoryInfo(h)
        return GpuSample(
            index=i, name=name.decode() if isinstance(name, bytes) else str(name),
            util_percent=float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            memory_used_bytes=int(mem.used), memory_total_bytes=int(mem.total),
            temperature_c=float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            power_w=n.nvmlDeviceGetPowerUsage(h) / 1000.0,
            sm_clock_mhz=float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)))

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
