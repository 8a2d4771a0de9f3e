"""The Jetson device profile: what the board is set to, and how much power it draws.

Records the L4T/JetPack release (/etc/nv_tegra_release), the power mode
(`nvpmodel -q`) and the clocks (`jetson_clocks --show`), and samples board
input power with `tegrastats` while a target runs, so the table gains energy
per image. On any other machine `is_jetson()` is False and `--device jetson`
stops with a message saying so.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from vggt_deploy.errors import UserError

# Orin: "VDD_IN 4806mW/4806mW"; Xavier/Nano: "POM_5V_IN 3500/3500" (mW).
_POWER = re.compile(r"(?:VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/")


def is_jetson(release_file: Path = Path("/etc/nv_tegra_release"), model_file: Path = Path("/proc/device-tree/model")) -> bool:
    if release_file.is_file():
        return True
    try:
        return "jetson" in model_file.read_text(errors="ignore").lower()
    except OSError:
        return False


def require_jetson() -> None:
    if not is_jetson():
        raise UserError("--device jetson: this machine is not a Jetson (no /etc/nv_tegra_release); "
                        "use --device cuda on an x86 GPU or --device cpu")


def parse_power_mw(line: str) -> float | None:
    """Board input power in mW from one tegrastats line (None when the line has none)."""
    match = _POWER.search(line)
    return float(match.group(1)) if match else None


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def board_state() -> dict:
    """L4T release, power mode and clocks, for the report's environment."""
    release = Path("/etc/nv_tegra_release")
    return {"l4t": release.read_text().splitlines()[0] if release.is_file() else None,
            "power_mode": _run(["nvpmodel", "-q"]) or None, "clocks": _run(["jetson_clocks", "--show"]) or None}


class PowerSampler:
    """Samples tegrastats in the background; `stop()` returns the mean board power in watts."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.samples: list[float] = []

    def start(self) -> PowerSampler:
        self.proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            mw = parse_power_mw(line)
            if mw is not None:
                self.samples.append(mw)

    def stop(self) -> float | None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.thread.join(timeout=5)
        return sum(self.samples) / len(self.samples) / 1e3 if self.samples else None
