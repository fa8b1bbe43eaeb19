"""Load generation with ``wrk`` (Debian's package: ``apt-get install -y wrk``), pinned to its own
core, one wrk thread, with a Lua script that picks a random user per request.

Two modes:
- closed loop: ``connections`` connections, each sending its next request as soon as the previous
  answer arrives (the throughput/latency curve);
- paced ("offered load"): wrk has no constant-rate mode (wrk2 is not packaged), so the script's
  ``delay()`` hook hands each request the next slot of a global schedule of ``rate`` requests/s
  (LuaJIT's ffi reads CLOCK_MONOTONIC). Latency is timed from the actual send, so it is
  service time without queueing in the client; enough connections are opened that a slot never
  waits for a free one unless the server stalls (the achieved rate shows it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import pinned

_COMMON = r"""
local n_users, k, batch = 1, 20, 0
function init(args)
  n_users = tonumber(args[1]); k = tonumber(args[2]); batch = tonumber(args[3] or "0")
  math.randomseed(tonumber(args[4] or "1"))
end

local headers = {["Content-Type"] = "application/json"}
function request()
  if batch > 0 then
    local ids = {}
    for i = 1, batch do ids[i] = '"u' .. math.random(0, n_users - 1) .. '"' end
    local body = '{"user_ids":[' .. table.concat(ids, ",") .. '],"k":' .. k .. '}'
    return wrk.format("POST", "/recommendations", headers, body)
  end
  return wrk.format("GET", "/recommendations/u" .. math.random(0, n_users - 1) .. "?k=" .. k)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,' ..
    '"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end
"""

_PACED = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local now_ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end
local interval_ms = 1000 / RATE
local next_slot = nil
function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  next_slot = next_slot + interval_ms
  local wait = next_slot - now
  if wait < 0 then return 0 end
  return wait
end
"""


@dataclass
class WrkRun:
    """One wrk run: what was asked and what it measured (latencies in ms)."""

    connections: int
    duration_s: float
    rate: float | None  # offered requests/s (paced), None for closed loop
    batch: int  # users per request (0 = GET one user)
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    server_cpu_s: float | None = None  # CPU time the server process used during the run

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "duration_s": self.duration_s,
            "offered_rps": self.rate,
            "batch_users": self.batch,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "users_per_s": round(self.requests_per_s * max(1, self.batch), 1),
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            "server_cpu_us_per_request": None
            if self.server_cpu_s is None or self.requests == 0
            else round(1e6 * self.server_cpu_s / self.requests, 1),
            "server_cpu_share": None
            if self.server_cpu_s is None or self.seconds <= 0
            else round(self.server_cpu_s / self.seconds, 3),
        }


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (Debian package)")
    return path


def script(rate: float | None) -> str:
    """The Lua script of one mode (paced when ``rate`` is given)."""
    if rate is None:
        return _COMMON
    return _COMMON + _PACED.replace("RATE", repr(float(rate)))


def run_wrk(
    base_url: str,
    n_users: int,
    connections: int,
    duration_s: float,
    cores: list[int],
    k: int = 20,
    rate: float | None = None,
    batch: int = 0,
    seed: int = 1,
) -> WrkRun:
    """Run wrk against ``base_url`` and parse the JSON its ``done()`` prints."""
    with tempfile.TemporaryDirectory(prefix="ccd-wrk-") as folder:
        lua = Path(folder) / "bench.lua"
        lua.write_text(script(rate))
        command = [
            wrk_path(),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            base_url,
            "--",
            str(n_users),
            str(k),
            str(batch),
            str(seed),
        ]
        done = subprocess.run(
            pinned(command, cores), capture_output=True, text=True, timeout=duration_s + 60
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout}{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkRun(
        connections=connections,
        duration_s=duration_s,
        rate=rate,
        batch=batch,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=raw["errors"],
        latency_ms={name: value / 1000 for name, value in raw["latency_us"].items()},
    )
