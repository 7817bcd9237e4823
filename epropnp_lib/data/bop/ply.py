"""Reader of PLY triangle meshes (ASCII and binary, as BOP distributes its models).

Vertex properties ``x y z [nx ny nz] [red green blue]``, faces as ``vertex_indices`` (or
``vertex_index``) lists; polygons are fan-triangulated.  Values stay in the file's units.  A bad
file raises :class:`~epropnp_lib.data.bop.errors.BopDataError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from epropnp_lib.data.bop.errors import BopDataError

__all__ = ["PlyMesh", "read_ply"]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PlyMesh(NamedTuple):
    """A triangle mesh read from a PLY file, in the file's units (BOP: millimetres).

    Attributes:
        vertices: ``(V, 3)`` float64.
        normals: ``(V, 3)`` float64 or ``None``.
        colors: ``(V, 3)`` uint8 (red, green, blue) or ``None``.
        faces: ``(F, 3)`` int64 (polygons are fan-triangulated; ``(0, 3)`` for a point cloud).
    """

    vertices: np.ndarray
    normals: np.ndarray | None
    colors: np.ndarray | None
    faces: np.ndarray


class _PlyElement(NamedTuple):
    name: str
    size: int
    # (name, dtype) for scalars, (name, count dtype, item dtype) for lists
    props: list[tuple[str, ...]]


def _parse_ply_header(data: bytes, path: Path) -> tuple[str, list[_PlyElement], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise BopDataError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    nl = data.find(b"\n", end)
    body = len(data) if nl < 0 else nl + 1
    fmt = ""
    elements: list[_PlyElement] = []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = raw.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        try:
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append(_PlyElement(tok[1], int(tok[2]), []))
            elif tok[0] == "property" and tok[1] == "list":
                elements[-1].props.append((tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            elif tok[0] == "property":
                elements[-1].props.append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise ValueError(raw)
        except (IndexError, KeyError, ValueError):
            raise BopDataError(f"{path}: malformed PLY header line {raw!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise BopDataError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements, body


def _triangulate(polys: list[list[int]], path: Path) -> np.ndarray:
    tris: list[list[int]] = []
    for p in polys:
        if len(p) < 3:
            raise BopDataError(f"{path}: a face has fewer than 3 vertices")
        tris.extend([p[0], p[i], p[i + 1]] for i in range(1, len(p) - 1))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _read_ascii(text: list[bytes], elements: list[_PlyElement], path: Path
                ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    line = 0
    for el in elements:
        rows = text[line:line + el.size]
        if len(rows) < el.size:
            raise BopDataError(f"{path}: truncated PLY: element {el.name!r} has {len(rows)} of "
                               f"{el.size} lines")
        line += el.size
        has_list = any(len(p) == 3 for p in el.props)
        if not has_list:
            try:
                vals = np.array(b" ".join(rows).split(), dtype=np.float64)
                vals = vals.reshape(el.size, len(el.props))
            except ValueError:
                raise BopDataError(f"{path}: malformed PLY data in element {el.name!r}") from None
            out[el.name] = {p[0]: vals[:, i] for i, p in enumerate(el.props)}
            continue
        lists: dict[str, list[list[int]]] = {p[0]: [] for p in el.props if len(p) == 3}
        for r in rows:
            tok = r.split()
            pos = 0
            try:
                for p in el.props:
                    if len(p) == 3:
                        n = int(tok[pos])
                        lists[p[0]].append([int(float(v)) for v in tok[pos + 1:pos + 1 + n]])
                        if len(lists[p[0]][-1]) != n:
                            raise ValueError
                        pos += 1 + n
                    else:
                        pos += 1
            except (IndexError, ValueError):
                raise BopDataError(f"{path}: malformed PLY line in element {el.name!r}") from None
        out[el.name] = dict(lists)
    return out


def _read_binary(body: bytes, elements: list[_PlyElement], endian: str, path: Path
                 ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    for el in elements:
        scalar = [p for p in el.props if len(p) == 2]
        lists = [p for p in el.props if len(p) == 3]
        if not lists:
            dt = np.dtype([(p[0], endian + p[1]) for p in el.props])
            need = dt.itemsize * el.size
            if offset + need > len(body):
                raise BopDataError(f"{path}: truncated PLY: element {el.name!r} needs {need} "
                                   f"bytes, {len(body) - offset} left")
            arr = np.frombuffer(body, dtype=dt, count=el.size, offset=offset)
            out[el.name] = {p[0]: arr[p[0]].astype(np.float64) for p in scalar}
            offset += need
            continue
        # Fast path: every list holds 3 items (triangle meshes).
        fields: list[tuple[Any, ...]] = []
        for p in el.props:
            if len(p) == 3:
                fields += [(p[0] + "__n", endian + p[1]), (p[0], endian + p[2], (3,))]
            else:
                fields.append((p[0], endian + p[1]))
        dt = np.dtype(fields)
        need = dt.itemsize * el.size
        if offset + need <= len(body):
            arr = np.frombuffer(body, dtype=dt, count=el.size, offset=offset)
            if all((arr[p[0] + "__n"] == 3).all() for p in lists):
                out[el.name] = {p[0]: arr[p[0]].astype(np.int64) for p in lists}
                offset += need
                continue
        # General path: variable-length lists, element by element.
        parsed: dict[str, list[list[int]]] = {p[0]: [] for p in lists}
        try:
            for _ in range(el.size):
                for p in el.props:
                    cdt = np.dtype(endian + p[1])
                    n_or_v = np.frombuffer(body, dtype=cdt, count=1, offset=offset)[0]
                    offset += cdt.itemsize
                    if len(p) == 3:
                        idt = np.dtype(endian + p[2])
                        items = np.frombuffer(body, dtype=idt, count=int(n_or_v), offset=offset)
                        offset += idt.itemsize * int(n_or_v)
                        parsed[p[0]].append(items.astype(np.int64).tolist())
        except ValueError:
            raise BopDataError(f"{path}: truncated PLY in element {el.name!r}") from None
        out[el.name] = dict(parsed)
    return out


def read_ply(path: str | Path) -> PlyMesh:
    """Read an ASCII or binary PLY mesh (vertex x y z [nx ny nz] [red green blue], faces).

    Raises:
        BopDataError: missing file, not a PLY, unsupported format, truncated or malformed data,
            no x/y/z properties, face indices out of range.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BopDataError(f"{path}: model file not found") from None
    fmt, elements, start = _parse_ply_header(data, path)
    if fmt == "ascii":
        rows = [r for r in data[start:].splitlines() if r.strip()]
        parsed = _read_ascii(rows, elements, path)
    else:
        parsed = _read_binary(data[start:], elements, "<" if "little" in fmt else ">", path)
    vert = parsed.get("vertex", {})
    if not all(k in vert for k in ("x", "y", "z")):
        raise BopDataError(f"{path}: PLY has no vertex element with x, y, z")
    vertices = np.stack([vert["x"], vert["y"], vert["z"]], axis=-1).astype(np.float64)
    normals = (np.stack([vert["nx"], vert["ny"], vert["nz"]], axis=-1)
               if all(k in vert for k in ("nx", "ny", "nz")) else None)
    colors = (np.stack([vert["red"], vert["green"], vert["blue"]], axis=-1).astype(np.uint8)
              if all(k in vert for k in ("red", "green", "blue")) else None)
    face_el = parsed.get("face", {})
    idx = face_el.get("vertex_indices", face_el.get("vertex_index"))
    if idx is None:
        faces = np.zeros((0, 3), dtype=np.int64)
    elif isinstance(idx, np.ndarray):
        faces = idx.reshape(-1, 3)
    else:
        faces = _triangulate(idx, path)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise BopDataError(f"{path}: face indices out of range [0, {len(vertices)})")
    if not np.isfinite(vertices).all():
        raise BopDataError(f"{path}: non-finite vertex coordinates")
    return PlyMesh(vertices, normals, colors, faces)
