"""Loading a nuScenes dataset with the devkit, with errors that name the bad file."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from epropnp_lib.data.nuscenes.errors import NuScenesFormatError

__all__ = ["dangling_reference", "load_nuscenes", "read_json_file"]

_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
           "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")

# Foreign keys checked when the devkit cannot load a dataset: (table, field, target table).
_REFERENCES = (
    ("instance", "category_token", "category"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("scene", "log_token", "log"),
    ("sample", "scene_token", "scene"),
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "ego_pose_token", "ego_pose"),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("sample_annotation", "attribute_tokens", "attribute"),
    ("map", "log_tokens", "log"),
)


def read_json_file(path: Path, missing: str, invalid_hint: str = "") -> Any:
    """The content of a JSON file; :class:`NuScenesFormatError` naming it when it is missing
    (message ``missing``) or not valid JSON (the parser's message, then ``invalid_hint``)."""
    if not path.is_file():
        raise NuScenesFormatError(path, missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NuScenesFormatError(path, f"not valid JSON ({exc}){invalid_hint}") from exc


def _load_table(path: Path) -> list[dict[str, Any]]:
    table = read_json_file(path, "table file is missing", "; truncated or corrupt?")
    if not isinstance(table, list) or not all(isinstance(r, dict) and "token" in r
                                               for r in table):
        raise NuScenesFormatError(path, "expected a JSON list of records with a 'token'")
    return table


def dangling_reference(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    references: Iterable[tuple[str, str, str, bool]],
    table_root: Path,
) -> NuScenesFormatError | None:
    """The first broken foreign key among ``references`` ``(table, field, target table, may be
    empty)`` of ``tables`` (name -> records: the JSON tables or the devkit's), naming the table
    file under ``table_root``, the record, the field and the token; ``None`` when all hold."""
    tokens: dict[str, set[str]] = {}
    for name, key, target, may_be_empty in references:
        if target not in tokens:
            tokens[target] = {r["token"] for r in tables[target]}
        for record in tables[name]:
            if key not in record:
                return NuScenesFormatError(table_root / f"{name}.json",
                                           f"record {record['token']} lacks the field {key!r}")
            refs = record[key] if isinstance(record[key], list) else [record[key]]
            for ref in refs:
                if not (ref == "" and may_be_empty) and ref not in tokens[target]:
                    return NuScenesFormatError(
                        table_root / f"{name}.json",
                        f"record {record['token']}: {key} {ref!r} is not in {target}.json")
    return None


def _diagnose(dataroot: Path, version: str) -> NuScenesFormatError | None:
    """The first file-level problem of a dataset the devkit failed to load, if one is found."""
    table_root = dataroot / version
    tables: dict[str, list[dict[str, Any]]] = {}
    for name in _TABLES:
        try:
            tables[name] = _load_table(table_root / f"{name}.json")
        except NuScenesFormatError as exc:
            return exc
    found = dangling_reference(tables, [(t, k, target, False) for t, k, target in _REFERENCES],
                               table_root)
    if found is not None:
        return found
    if not tables["map"]:
        return NuScenesFormatError(table_root / "map.json", "the map table is empty")
    for record in tables["map"]:
        if not (dataroot / record["filename"]).is_file():
            return NuScenesFormatError(dataroot / record["filename"], "map mask file is missing")
    return None


def load_nuscenes(dataroot: str | os.PathLike[str], version: str = "v1.0-mini") -> Any:
    """``nuscenes.nuscenes.NuScenes(version, dataroot)`` with errors that name the bad file.

    Raises:
        NuScenesFormatError: a missing version folder or table, a truncated/invalid JSON table,
            a dangling token, or a missing map mask.
    """
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    if not (root / version).is_dir():
        raise NuScenesFormatError(root / version, "nuScenes version folder not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(root), verbose=False)
    except Exception as exc:
        found = _diagnose(root, version)
        if found is not None:
            raise found from exc
        raise NuScenesFormatError(root / version,
                                  f"the devkit failed to load it: {exc!r}") from exc
