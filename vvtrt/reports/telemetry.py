"""Background GPU telemetry over NVML (nvidia-ml-py).

    with TelemetrySampler(interval_s=0.05) as tel:
        run_benchmark()
    report["telemetry"] = tel.to_dict()

Without the NVML library, a GPU or a permission, the sampler logs at debug level and records nothing;
it never raises. The polling thread is a daemon that stops (and is joined) when the context exits.

:class:`ProcessMemorySampler` polls one process's own GPU memory (its pid in NVML's process lists) and
the device's used memory, keeping peaks; :func:`peak_rss_bytes` is the process's peak host memory.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

SERIES = ("gpu_util", "mem_used_bytes", "temp_c", "sm_clock_mhz", "power_w")


class TelemetrySampler:
    """Polls one GPU every `interval_s` seconds. `device_index` is the CUDA ordinal; it is mapped to the
    NVML device by UUID when torch has CUDA initialised, else used as the NVML index."""

    def __init__(self, interval_s: float = 0.05, device_index: int = 0, max_samples: int = 200_000):
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = float(interval_s)
        self.device_index = int(device_index)
        self.max_samples = int(max_samples)
        self.samples: list[dict] = []
        self.available = False
        self._nvml = None
        self._handle = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t0 = 0.0
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "TelemetrySampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TelemetrySampler":
        if self._thread is not None:
            return self
        self.samples = []
        self._stop.clear()
        self._t0 = time.perf_counter()
        if not self._init_nvml():
            return self
        self._sample()  # one sample right away, so even a short run has one
        self._thread = threading.Thread(target=self._run, name="vvtrt-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=max(5.0, 4 * self.interval_s))
            if thread.is_alive():  # an NVML call hung; the daemon thread cannot block exit
                log.debug("telemetry thread did not stop in time")
            else:
                self._sample()  # and one at the end
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:  # noqa: BLE001
                log.debug("nvmlShutdown failed: %s", e)
            self._nvml = None
            self._handle = None

    # -- results -----------------------------------------------------------------------------------
    def peak_mem_used(self) -> int | None:
        """Largest NVML memory-used reading in bytes, or None without samples."""
        vals = [s["mem_used_bytes"] for s in self.samples if s.get("mem_used_bytes") is not None]
        return max(vals) if vals else None

    def to_dict(self) -> dict:
        """The report's ``telemetry`` object."""
        return {"interval_s": self.interval_s, "samples": list(self.samples)}

    def elapsed(self) -> float:
        """Seconds since `start` on the samples' clock (their ``t``), e.g. to mark phases of a run."""
        return time.perf_counter() - self._t0

    # -- internals ---------------------------------------------------------------------------------
    def _init_nvml(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - missing package, library, driver or GPU
            log.debug("GPU telemetry disabled: %s", e)
            return False
        self._nvml = pynvml
        try:
            self._handle = self._resolve_handle(pynvml)
        except Exception as e:  # noqa: BLE001
            log.debug("GPU telemetry disabled: no NVML device %d: %s", self.device_index, e)
            try:
                pynvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None
            return False
        self.available = True
        return True

    def _resolve_handle(self, nvml):
        return nvml_handle(nvml, self.device_index)

    def _read(self, fn):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - a metric the device does not support
            return None

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        if nvml is None or h is None:
            return
        t = time.perf_counter() - self._t0
        util = self._read(lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        mem = self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(h).used)
        temp = self._read(lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
        clock = self._read(lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        power_mw = self._read(lambda: nvml.nvmlDeviceGetPowerUsage(h))
        sample = {"t": round(t, 6), "gpu_util": util, "mem_used_bytes": mem, "temp_c": temp,
                  "sm_clock_mhz": clock, "power_w": None if power_mw is None else power_mw / 1000.0}
        with self._lock:
            if len(self.samples) < self.max_samples:
                self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()
            if len(self.samples) >= self.max_samples:
                log.debug("telemetry stopped at max_samples=%d", self.max_samples)
                return


def nvml_handle(nvml, device_index: int):
    """The NVML handle of CUDA ordinal `device_index`: by UUID when torch has CUDA initialised, else through
    CUDA_VISIBLE_DEVICES (an index or a UUID per entry) when set, else NVML's own index."""
    torch = sys.modules.get("torch")  # only if the caller already uses torch; never import it here
    try:
        if torch is not None and torch.cuda.is_initialized():
            uuid = str(torch.cuda.get_device_properties(device_index).uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception as e:  # noqa: BLE001 - MIG devices, old torch: fall back to the index
        log.debug("NVML lookup by UUID failed (%s)", e)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if device_index < len(visible):
        entry = visible[device_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        if entry.startswith("GPU-"):
            return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


def peak_rss_bytes() -> int | None:
    """This process's peak resident host memory in bytes (getrusage; KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class ProcessMemorySampler(TelemetrySampler):
    """Peaks of one process's own GPU memory and of the device's used memory, polled over NVML.

    The process's figure is its pid's entry in the device's compute and graphics process lists (the larger
    where it is in both). NVML lists host pids: in a container with its own PID namespace the pid is not
    found, and the process figure stays None with a status saying so, never a device-wide number in its
    place. Start it before the process touches CUDA: the first reading is the device's baseline."""

    def __init__(self, interval_s: float = 0.02, device_index: int = 0, pid: int | None = None):
        super().__init__(interval_s, device_index)
        self.pid = int(pid or os.getpid())
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.device_baseline: int | None = None
        self.after_load_peak: int | None = None  # the process's peak since `mark_loaded`
        self._loaded = False
        self._listed = False  # the pid appeared in a process list
        self._lists_read = False  # a process list was read at all

    def _own_usage(self, nvml, h) -> int | None:
        best = None
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            procs = self._read(lambda: getattr(nvml, fn)(h))
            if procs is None:
                continue
            self._lists_read = True
            for p in procs:
                if int(p.pid) == self.pid:
                    self._listed = True
                    used = getattr(p, "usedGpuMemory", None)
                    if used is not None:
                        best = max(best or 0, int(used))
        return best

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        if nvml is None or h is None:
            return
        used = self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(h).used)
        own = self._own_usage(nvml, h)
        with self._lock:
            if self.device_baseline is None:
                self.device_baseline = used
            if used is not None:
                self.device_peak = max(self.device_peak or 0, int(used))
            if own is not None:
                self.process_peak = max(self.process_peak or 0, own)
                if self._loaded:
                    self.after_load_peak = max(self.after_load_peak or 0, own)

    def mark_loaded(self) -> None:
        """From now on also keep the process's peak apart from the load's (`vvtrt.bench.memory_probe`)."""
        with self._lock:
            self._loaded, self.after_load_peak = True, None
        self._sample()

    def status(self) -> str:
        if not self.available:
            return "not measured: no NVML device"
        if self.process_peak is not None:
            return "measured: this process's pid in NVML's process list"
        if self._listed:
            return "not measured: NVML lists this pid without a memory figure"
        if not self._lists_read:
            return "not measured: NVML cannot list the device's processes"
        return "not measured: NVML never listed this pid (another PID namespace, e.g. a container?)"

    def snapshot(self) -> dict:
        """The peaks so far (the sampler keeps running), as report ``memory`` fields."""
        self._sample()
        with self._lock:
            return {"nvml_process_peak_bytes": self.process_peak,
                    "nvml_process_after_load_peak_bytes": self.after_load_peak,
                    "nvml_peak_used_bytes": self.device_peak,
                    "nvml_device_baseline_bytes": self.device_baseline, "nvml_process_status": self.status(),
                    "host_peak_rss_bytes": peak_rss_bytes()}
