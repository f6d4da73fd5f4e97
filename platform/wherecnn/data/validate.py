"""Check a manifest folder (captures / tiles / pairs GeoParquet) against the column contracts.

Read-only: nothing is modified. Every problem names the file, the row (0-based position in the table) and the
field, so a person can fix the data; `wherecnn validate DIR` prints them and exits non-zero on any error.
Unknown locations (NaN lat/lon, e.g. CVUSA without ``split_locations/all.csv``) are warnings, not errors:
such rows still train, they just cannot be placed on a map.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from wherecnn import storage
from wherecnn.data.manifest import (
    CAPTURE_COLUMNS,
    CAPTURES,
    CRS,
    PAIR_COLUMNS,
    PAIRS,
    SPLITS,
    TILE_COLUMNS,
    TILES,
)

Severity = Literal["error", "warning"]
_KIND_NAMES = {"O": "string", "f": "float", "i": "integer", "b": "bool"}
# positional tolerance between geometry and lat/lon columns (degrees; ~1 cm)
_GEOM_TOL_DEG = 1e-7


@dataclass(frozen=True)
class Problem:
    """One finding. ``row`` is the 0-based row position in ``file`` (None for file-level problems)."""

    file: str
    row: int | None
    field: str | None
    kind: str
    message: str
    severity: Severity = "error"

    def where(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)


@dataclass
class ValidationReport:
    """All findings of one folder; ``counts`` holds the full number per (file, kind) even when capped."""

    directory: str
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    uris_checked: int = 0
    cap: int = 10_000

    def add(self, problem: Problem) -> None:
        key = (problem.file, problem.kind, problem.severity)
        self.counts[key] += 1
        if self.counts[key] <= self.cap:
            self.problems.append(problem)

    @property
    def n_errors(self) -> int:
        return sum(n for (_, _, sev), n in self.counts.items() if sev == "error")

    @property
    def n_warnings(self) -> int:
        return sum(n for (_, _, sev), n in self.counts.items() if sev == "warning")

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def by_kind(self) -> dict[tuple[str, str, str], list[Problem]]:
        out: dict[tuple[str, str, str], list[Problem]] = {}
        for p in self.problems:
            out.setdefault((p.file, p.kind, p.severity), []).append(p)
        return out

    def to_dict(self, limit_per_kind: int | None = None) -> dict[str, Any]:
        problems = []
        for _, items in self.by_kind().items():
            problems.extend(asdict(p) for p in items[:limit_per_kind])
        return {
            "directory": self.directory,
            "ok": self.ok,
            "errors": self.n_errors,
            "warnings": self.n_warnings,
            "rows": self.rows,
            "uris_checked": self.uris_checked,
            "counts": [
                {"file": f, "kind": k, "severity": s, "count": n}
                for (f, k, s), n in sorted(self.counts.items())
            ],
            "problems": problems,
        }

    def to_json(self, limit_per_kind: int | None = None) -> str:
        return json.dumps(self.to_dict(limit_per_kind), indent=2, default=str)


Progress = Callable[[int, int], None]


def validate_dir(
    directory: str | Path,
    *,
    check_uris: bool = True,
    workers: int = 16,
    progress: Progress | None = None,
    cap: int = 10_000,
) -> ValidationReport:
    """Validate ``captures.parquet``, ``tiles.parquet`` and ``pairs.parquet`` in ``directory``.

    ``directory`` may be a local folder or an ``s3://bucket/prefix``: the three tables are then downloaded to
    a temporary folder and relative image URIs resolve against the prefix. ``progress(done, total)`` is called
    while URIs are checked (the slow part on S3).
    """
    if storage.is_s3(str(directory)):
        import tempfile

        prefix = str(directory).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="wherecnn-validate-") as tmp:
            for name in (CAPTURES, TILES, PAIRS):
                with contextlib.suppress(FileNotFoundError):  # reported as missing-file below
                    storage.download_to(storage.join(prefix, name), Path(tmp) / name)
            report = _validate_local(Path(tmp), prefix, check_uris, workers, progress, cap)
        report.directory = prefix
        return report
    return _validate_local(Path(directory), None, check_uris, workers, progress, cap)


def _validate_local(
    root: Path, uri_base: str | None, check_uris: bool, workers: int, progress: Progress | None, cap: int
) -> ValidationReport:
    report = ValidationReport(directory=str(root), cap=cap)
    if not root.is_dir():
        report.add(Problem(str(root), None, None, "missing-folder", f"no such folder: {root}"))
        return report
    base = uri_base if uri_base is not None else str(root.resolve())

    captures = _read_geo(root / CAPTURES, report)
    tiles = _read_geo(root / TILES, report)
    pairs = _read_plain(root / PAIRS, report)

    capture_ids: set[str] = set()
    tile_ids: set[str] = set()
    uri_rows: list[tuple[str, int, str]] = []  # (file, row, absolute uri)
    if captures is not None:
        _check_table(CAPTURES, captures, CAPTURE_COLUMNS, "capture_id", report)
        _check_points(CAPTURES, captures, report)
        _check_capture_values(captures, report)
        capture_ids = _id_set(captures, "capture_id")
        uri_rows += _uris(CAPTURES, captures, base)
    if tiles is not None:
        _check_table(TILES, tiles, TILE_COLUMNS, "tile_id", report)
        _check_footprints(TILES, tiles, report)
        _check_tile_values(tiles, report)
        tile_ids = _id_set(tiles, "tile_id")
        uri_rows += _uris(TILES, tiles, base)
    if pairs is not None:
        _check_table(PAIRS, pairs, PAIR_COLUMNS, None, report)
        if captures is not None and "capture_id" in pairs.columns and "capture_id" in captures.columns:
            paired = set(pairs["capture_id"].to_numpy(dtype=object))
            for row, cid in enumerate(captures["capture_id"].to_numpy(dtype=object)):
                if isinstance(cid, str) and cid not in paired:
                    report.add(
                        Problem(
                            CAPTURES,
                            row,
                            "capture_id",
                            "unpaired-capture",
                            f"capture {cid!r} has no pair (it can be searched for, not trained on)",
                            "warning",
                        )
                    )
        _check_pairs(
            pairs,
            capture_ids if captures is not None else None,
            tile_ids if tiles is not None else None,
            report,
        )
    if check_uris and uri_rows:
        _check_uris(uri_rows, report, workers=workers, progress=progress)
    return report


# ------------------------------------------------------------------------------------------- reading


def _read_geo(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """A GeoParquet table, its CRS checked; plain parquet is read and reported as not GeoParquet."""
    import geopandas as gpd

    name = path.name
    try:
        frame = _read_plain(path, report, reader=gpd.read_parquet, passing=(ValueError,))
    except ValueError as exc:  # plain parquet without GeoParquet metadata
        frame = _read_plain(path, report)
        if frame is not None:
            message = f"not a GeoParquet file (no 'geo' metadata / geometry column): {exc}"
            report.add(Problem(name, None, "geometry", "not-geoparquet", message))
        return frame
    if frame is None:
        return None
    crs = frame.crs
    if crs is None:
        report.add(
            Problem(name, None, "geometry", "crs", f"no CRS set; expected {CRS} (WGS84, x=lon, y=lat)")
        )
    elif crs.to_epsg() != 4326:
        report.add(Problem(name, None, "geometry", "crs", f"CRS is {crs.to_string()}; expected {CRS}"))
    return frame


def _read_plain(
    path: Path,
    report: ValidationReport,
    reader: Callable[[Path], pd.DataFrame] = pd.read_parquet,
    passing: tuple[type[Exception], ...] = (),
) -> pd.DataFrame | None:
    """A parquet table with its rows counted, or None with the problem reported (missing, unreadable);
    ``passing`` errors of ``reader`` are the caller's to handle."""
    name = path.name
    if not path.exists():
        report.add(Problem(name, None, None, "missing-file", f"{path} does not exist"))
        return None
    try:
        frame = reader(path)
    except passing:
        raise
    except Exception as exc:
        report.add(Problem(name, None, None, "unreadable", f"cannot read {path}: {exc}"))
        return None
    report.rows[name] = len(frame)
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------------------------------- columns


def _check_table(
    name: str, frame: pd.DataFrame, contract: dict[str, str], id_col: str | None, report: ValidationReport
) -> None:
    for col, kind in contract.items():
        if col not in frame.columns:
            report.add(
                Problem(
                    name,
                    None,
                    col,
                    "missing-column",
                    f"missing column {col!r} (expected {_KIND_NAMES[kind]})",
                )
            )
            continue
        _check_type(name, frame[col], col, kind, report)
    if id_col and id_col in frame.columns:
        ids = frame[id_col]
        for row in np.flatnonzero(ids.isna().to_numpy()):
            report.add(Problem(name, int(row), id_col, "null-id", f"{id_col} is null"))
        dup = ids.duplicated(keep="first") & ids.notna()
        if dup.any():
            first = {v: i for i, v in reversed(list(enumerate(ids)))}
            for row in np.flatnonzero(dup.to_numpy()):
                value = ids.iloc[row]
                report.add(
                    Problem(
                        name,
                        int(row),
                        id_col,
                        "duplicate-id",
                        f"duplicate {id_col} {value!r} (first at row {first[value]})",
                    )
                )


def _check_type(name: str, col: pd.Series, field_name: str, kind: str, report: ValidationReport) -> None:
    actual = col.dtype.kind
    if kind == "f":
        if actual not in "fiu":  # numbers stored as strings (object) included: the column is not numeric
            message = f"column {field_name!r} has dtype {col.dtype}; expected float"
            report.add(Problem(name, None, field_name, "wrong-type", message))
        return
    if kind == "O":
        if field_name == "semi_positive_tile_ids":
            for row, value in enumerate(col.to_numpy(dtype=object)):
                if value is None:
                    continue
                if not isinstance(value, (list, tuple, np.ndarray)) or not all(
                    isinstance(v, str) for v in value
                ):
                    report.add(
                        Problem(
                            name,
                            row,
                            field_name,
                            "wrong-type",
                            f"expected a list of tile_id strings, got {type(value).__name__}",
                        )
                    )
            return
        if actual not in ("O", "U", "T") and not isinstance(col.dtype, pd.StringDtype):
            report.add(
                Problem(
                    name,
                    None,
                    field_name,
                    "wrong-type",
                    f"column {field_name!r} has dtype {col.dtype}; expected string",
                )
            )
            return
        if isinstance(col.dtype, pd.StringDtype):  # string-typed columns hold only strings and nulls
            return
        values = col.to_numpy(dtype=object)
        bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str) and not _isnan(v)]
        for row in bad:
            report.add(
                Problem(
                    name,
                    row,
                    field_name,
                    "wrong-type",
                    f"expected a string, got {type(col.iloc[row]).__name__} {col.iloc[row]!r}",
                )
            )
        return


def _isnan(v: object) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _num(frame: pd.DataFrame, col: str) -> np.ndarray | None:
    if col not in frame.columns or frame[col].dtype.kind not in "fiu":
        return None
    return frame[col].to_numpy(dtype=np.float64)


def _check_lat_lon(name: str, frame: pd.DataFrame, report: ValidationReport) -> np.ndarray:
    """Range checks; returns a mask of rows with a valid known location."""
    lat, lon = _num(frame, "lat"), _num(frame, "lon")
    if lat is None or lon is None:
        return np.zeros(len(frame), dtype=bool)
    unknown = np.isnan(lat) | np.isnan(lon)
    for row in np.flatnonzero(unknown):
        report.add(
            Problem(
                name, int(row), "lat/lon", "unknown-location", "lat/lon is NaN (location unknown)", "warning"
            )
        )
    with np.errstate(invalid="ignore"):
        bad_lat = ~unknown & ~(np.abs(lat) <= 90.0)
        bad_lon = ~unknown & ~(np.abs(lon) <= 180.0)
    for row in np.flatnonzero(bad_lat):
        hint = " (lat and lon swapped?)" if abs(lat[row]) <= 180.0 and abs(lon[row]) <= 90.0 else ""
        report.add(Problem(name, int(row), "lat", "out-of-range", f"lat {lat[row]} outside [-90, 90]{hint}"))
    for row in np.flatnonzero(bad_lon):
        report.add(Problem(name, int(row), "lon", "out-of-range", f"lon {lon[row]} outside [-180, 180]"))
    return ~unknown & ~bad_lat & ~bad_lon


def _geometry_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(geometries, missing-or-empty mask, geometry type names) as arrays, or None without a geometry."""
    import shapely

    if "geometry" not in frame.columns or not hasattr(frame, "geometry"):
        return None
    geoms = np.asarray(frame.geometry.array, dtype=object)
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    types = np.array([g.geom_type if g is not None else "" for g in geoms], dtype=object)
    return geoms, missing, types


def _geometries_to_check(
    name: str, frame: pd.DataFrame, report: ValidationReport, types_wanted: Sequence[str], what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The checks points and footprints share: lat/lon in range, a geometry where lat/lon are set, of one of
    ``types_wanted`` (``what`` names it in the message). (geometries, lat, lon, rows to compare) or None
    when there is nothing to compare."""
    valid = _check_lat_lon(name, frame, report)
    arrays = _geometry_arrays(frame)
    if arrays is None:
        return None
    geoms, missing, types = arrays
    noun = "geometry" if what == "a Point" else "footprint"
    for row in np.flatnonzero(missing & valid):
        report.add(
            Problem(name, int(row), "geometry", "geometry-mismatch", f"{noun} is empty but lat/lon are set")
        )
    wrong = ~missing & ~np.isin(types, list(types_wanted))
    for row in np.flatnonzero(wrong):
        report.add(Problem(name, int(row), "geometry", "geometry-type", f"expected {what}, got {types[row]}"))
    lat, lon = _num(frame, "lat"), _num(frame, "lon")
    check = ~missing & ~wrong & valid
    if lat is None or lon is None or not check.any():
        return None
    return geoms, lat, lon, check


def _check_points(name: str, frame: pd.DataFrame, report: ValidationReport) -> None:
    import shapely

    found = _geometries_to_check(name, frame, report, ["Point"], "a Point")
    if found is None:
        return
    geoms, lat, lon, check = found
    x = np.full(len(frame), np.nan)
    y = np.full(len(frame), np.nan)
    x[check] = shapely.get_x(geoms[check])
    y[check] = shapely.get_y(geoms[check])
    with np.errstate(invalid="ignore"):
        bad = check & ((np.abs(x - lon) > _GEOM_TOL_DEG) | (np.abs(y - lat) > _GEOM_TOL_DEG))
    for row in np.flatnonzero(bad):
        swapped = abs(x[row] - lat[row]) <= _GEOM_TOL_DEG and abs(y[row] - lon[row]) <= _GEOM_TOL_DEG
        hint = " — x/y swapped: geometry must be (x=lon, y=lat)" if swapped else ""
        report.add(
            Problem(
                name,
                int(row),
                "geometry",
                "geometry-mismatch",
                f"point ({x[row]}, {y[row]}) does not match lon/lat ({lon[row]}, {lat[row]}){hint}",
            )
        )


def _check_footprints(name: str, frame: pd.DataFrame, report: ValidationReport) -> None:
    import shapely

    found = _geometries_to_check(name, frame, report, ["Polygon", "MultiPolygon"], "a footprint Polygon")
    if found is None:
        return
    geoms, lat, lon, check = found
    idx = np.flatnonzero(check)
    grown = shapely.buffer(geoms[idx], _GEOM_TOL_DEG)
    inside = shapely.contains_xy(grown, lon[idx], lat[idx])
    for k in np.flatnonzero(~inside):
        row = int(idx[k])
        swapped = bool(shapely.contains_xy(grown[k], lat[row], lon[row]))
        hint = " — x/y swapped: geometry must be (x=lon, y=lat)" if swapped else ""
        b = geoms[row].bounds
        report.add(
            Problem(
                name,
                row,
                "geometry",
                "geometry-mismatch",
                f"tile centre (lat {lat[row]}, lon {lon[row]}) lies outside its footprint "
                f"(lon {b[0]:.6f}..{b[2]:.6f}, lat {b[1]:.6f}..{b[3]:.6f}){hint}",
            )
        )


def _check_required_strings(
    name: str, frame: pd.DataFrame, cols: Iterable[str], report: ValidationReport
) -> None:
    for col in cols:
        if col not in frame.columns:
            continue
        values = frame[col]
        empty = values.isna() | (values.astype(str).str.len() == 0)
        for row in np.flatnonzero(empty.to_numpy()):
            report.add(Problem(name, int(row), col, "null-value", f"{col} is null or empty"))


def _check_capture_values(frame: pd.DataFrame, report: ValidationReport) -> None:
    _check_required_strings(CAPTURES, frame, ("city", "uri", "split"), report)
    for col in ("split", "split_cross_area"):
        if col not in frame.columns:
            continue
        values = frame[col].to_numpy(dtype=object)
        for row in np.flatnonzero([isinstance(v, str) and v and v not in SPLITS for v in values]):
            report.add(
                Problem(
                    CAPTURES,
                    int(row),
                    col,
                    "unknown-split",
                    f"{col} {values[row]!r} is not one of {', '.join(SPLITS)} (train/evaluate ignore it)",
                    "warning",
                )
            )
    fov = _num(frame, "fov_deg")
    if fov is not None:
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(fov) & ~((fov > 0) & (fov <= 360))
        for row in np.flatnonzero(bad):
            report.add(
                Problem(CAPTURES, int(row), "fov_deg", "out-of-range", f"fov_deg {fov[row]} not in (0, 360]")
            )
    heading = _num(frame, "heading_deg")
    if heading is not None:
        bad = ~np.isnan(heading) & ~np.isfinite(heading)
        for row in np.flatnonzero(bad):
            report.add(
                Problem(
                    CAPTURES,
                    int(row),
                    "heading_deg",
                    "out-of-range",
                    f"heading_deg {heading[row]} is not finite",
                )
            )


def _check_tile_values(frame: pd.DataFrame, report: ValidationReport) -> None:
    _check_required_strings(TILES, frame, ("city", "uri", "split"), report)
    gsd = _num(frame, "gsd_m")
    if gsd is not None:
        unknown = np.isnan(gsd)
        for row in np.flatnonzero(unknown):
            report.add(
                Problem(TILES, int(row), "gsd_m", "unknown-gsd", "gsd_m is NaN (scale unknown)", "warning")
            )
        with np.errstate(invalid="ignore"):
            bad = ~unknown & ~((gsd > 0) & np.isfinite(gsd))
        for row in np.flatnonzero(bad):
            report.add(Problem(TILES, int(row), "gsd_m", "out-of-range", f"gsd_m {gsd[row]} must be > 0"))


def _check_pairs(
    pairs: pd.DataFrame, capture_ids: set[str] | None, tile_ids: set[str] | None, report: ValidationReport
) -> None:
    _check_required_strings(PAIRS, pairs, ("capture_id", "tile_id", "track"), report)
    # each id a pair names must be in its table: (column, the ids there, code, what the id is, table)
    references = [
        ("capture_id", capture_ids, "dangling-capture", "capture", CAPTURES),
        ("tile_id", tile_ids, "dangling-positive", "positive tile", TILES),
        ("semi_positive_tile_ids", tile_ids, "dangling-semi-positive", "semi-positive tile", TILES),
    ]
    for col, known, code, what, table in references:
        if col not in pairs.columns or known is None:
            continue
        for row, value in enumerate(pairs[col].to_numpy(dtype=object)):
            ids = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
            for ref in ids:
                if isinstance(ref, str) and ref not in known:
                    report.add(Problem(PAIRS, row, col, code, f"{what} {ref!r} is not in {table}"))
    if {"capture_id", "tile_id", "track"} <= set(pairs.columns):
        dup = pairs.duplicated(subset=["capture_id", "tile_id", "track"], keep="first")
        for row in np.flatnonzero(dup.to_numpy()):
            report.add(
                Problem(
                    PAIRS,
                    int(row),
                    "capture_id",
                    "duplicate-pair",
                    f"pair ({pairs['capture_id'].iloc[row]!r}, {pairs['tile_id'].iloc[row]!r}, "
                    f"{pairs['track'].iloc[row]!r}) appears more than once",
                )
            )


# ------------------------------------------------------------------------------------------- URIs


def _id_set(frame: pd.DataFrame, col: str) -> set[str]:
    if col not in frame.columns:
        return set()
    return {v for v in frame[col].to_numpy(dtype=object) if isinstance(v, str)}


def _uris(name: str, frame: pd.DataFrame, base: str) -> list[tuple[str, int, str]]:
    """(file, row, absolute URI); relative URIs resolve against the manifest's folder or S3 prefix.

    Same rule as ``manifest.resolve_uris``, on plain strings for speed.
    """
    if "uri" not in frame.columns:
        return []
    remote = storage.is_s3(base)
    out = []
    for row, u in enumerate(frame["uri"].to_numpy(dtype=object)):
        if not isinstance(u, str) or not u:
            continue
        if "://" in u or u.startswith("/"):
            out.append((name, row, u))
        else:
            out.append((name, row, storage.join(base, u) if remote else os.path.join(base, u)))
    return out


def _check_uris(
    uri_rows: list[tuple[str, int, str]], report: ValidationReport, *, workers: int, progress: Progress | None
) -> None:
    unique = sorted({u for _, _, u in uri_rows})
    report.uris_checked = len(unique)
    status: dict[str, str | None] = {}  # uri -> None (ok) or a reason

    def check(uri: str) -> tuple[str, str | None]:
        try:
            if "://" not in uri:  # plain path: skip the URI machinery
                return uri, (None if os.path.exists(uri) else "does not exist")
            return uri, (None if storage.exists(uri) else "does not exist")
        except ValueError as exc:  # unsupported scheme
            return uri, str(exc)
        except OSError as exc:
            return uri, f"cannot be checked: {exc}"

    local = [u for u in unique if not storage.is_s3(u)]
    remote = [u for u in unique if storage.is_s3(u)]
    done = 0
    total = len(unique)
    for uri in local:
        status[uri] = check(uri)[1]
        done += 1
        if progress and done % 1000 == 0:
            progress(done, total)
    if remote:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for uri, reason in pool.map(check, remote):
                status[uri] = reason
                done += 1
                if progress and done % 100 == 0:
                    progress(done, total)
    if progress:
        progress(total, total)
    for name, row, uri in uri_rows:
        reason = status.get(uri)
        if reason is not None:
            report.add(Problem(name, row, "uri", "unresolved-uri", f"{uri} {reason}"))
