"""TailBench-like application profiles for the PIM emulator.

Chosen once, before any policy was tuned, from what the applications are
(DESIGN.md gives only the P99 targets: Silo and Masstree 1 ms, ImgDNN 7 ms,
Xapian and Moses 10 ms):
- Masstree (in-memory key-value tree, pointer chasing): the most memory-bound,
  so PIM cores are nearly as good as big ones (lowest R_i).
- Silo (OLTP): memory-bound but with more compute; private, written pages.
- ImgDNN (image recognition): compute-bound (highest R_i); its weights are
  shared read-only pages.
- Xapian (search) and Moses (translation): in between; large read-only index /
  phrase tables.
Hot sets are sized so a full move of the hot pages takes 3-8 control intervals
at 1 us per 4 KB page (PIMCloud's settle range).
"""

from __future__ import annotations

from pim_agent.presets import AppProfile

SILO = AppProfile(
    "silo", "lc", 1.0, cpu_service_ms=0.08, mem_intensity=0.5, r_pim=2.0,
    hot_gib=2.0, cold_gib=0.5, shared_fraction=0.1,
)  # fmt: skip
MASSTREE = AppProfile(
    "masstree", "lc", 1.0, cpu_service_ms=0.10, mem_intensity=0.7, r_pim=1.4,
    hot_gib=3.0, cold_gib=0.5, shared_fraction=0.1,
)  # fmt: skip
IMGDNN = AppProfile(
    "imgdnn", "lc", 7.0, cpu_service_ms=1.2, mem_intensity=0.2, r_pim=4.0,
    hot_gib=2.0, cold_gib=0.5, shared_fraction=0.8,
)  # fmt: skip
XAPIAN = AppProfile(
    "xapian", "lc", 10.0, cpu_service_ms=1.6, mem_intensity=0.45, r_pim=2.4,
    hot_gib=3.0, cold_gib=0.5, shared_fraction=0.7,
)  # fmt: skip
MOSES = AppProfile(
    "moses", "lc", 10.0, cpu_service_ms=2.0, mem_intensity=0.55, r_pim=1.8,
    hot_gib=3.0, cold_gib=0.5, shared_fraction=0.6,
)  # fmt: skip
# Best-effort work that runs on whatever cores are left (throughput only).
STREAM = AppProfile(
    "stream", "be", None, cpu_service_ms=1.0, mem_intensity=0.8, r_pim=1.2,
    hot_gib=2.0, cold_gib=0.5, shared_fraction=0.0,
)  # fmt: skip

TAILBENCH: dict[str, AppProfile] = {a.name: a for a in (SILO, MASSTREE, IMGDNN, XAPIAN, MOSES)}
