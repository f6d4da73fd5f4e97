"""Deterministic spatial-block splits for data that comes without official splits.

Nearby captures see the same buildings, so a random per-row split leaks test places into training; blocks of
``block_m`` metres keep whole neighbourhoods on one side.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from wherecnn import geo


def block_split(
    frame: pd.DataFrame, *, test_fraction: float = 0.2, block_m: float = 200.0, seed: int = 0
) -> pd.Series:
    """``train``/``test`` per row by hashing its spatial block (per city); unknown locations -> train."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    out = pd.Series("train", index=frame.index, dtype=object)
    lat = frame["lat"].to_numpy(dtype=np.float64)
    lon = frame["lon"].to_numpy(dtype=np.float64)
    known = np.isfinite(lat) & np.isfinite(lon)
    cities = frame["city"] if "city" in frame.columns else pd.Series("", index=frame.index)
    for city in pd.unique(cities[known]):
        sel = known & (cities == city).to_numpy()
        grid = geo.LocalGrid.at(lat=float(np.mean(lat[sel])), lon=float(np.mean(lon[sel])))
        x, y = grid.to_local(lat=lat[sel], lon=lon[sel])
        bx = np.floor(np.asarray(x) / block_m).astype(np.int64)
        by = np.floor(np.asarray(y) / block_m).astype(np.int64)
        draws = np.array([_unit(f"{seed}:{city}:{i}:{j}") for i, j in zip(bx, by, strict=True)])
        out[sel] = np.where(draws < test_fraction, "test", "train")
    return out


def _unit(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
