"""The LineMOD objects in the BOP ``lm`` dataset: ids, names and the standard protocol's
object sets."""

from __future__ import annotations

__all__ = ["LINEMOD_13", "LINEMOD_OBJECTS", "LINEMOD_OBJECT_IDS", "LINEMOD_SYMMETRIC"]

#: BOP ``lm`` object ids and the LineMOD object names.
LINEMOD_OBJECTS: dict[int, str] = {
    1: "ape", 2: "benchvise", 3: "bowl", 4: "camera", 5: "can", 6: "cat", 7: "cup",
    8: "driller", 9: "duck", 10: "eggbox", 11: "glue", 12: "holepuncher", 13: "iron",
    14: "lamp", 15: "phone",
}
#: LineMOD object name -> BOP object id.
LINEMOD_OBJECT_IDS: dict[str, int] = {name: i for i, name in LINEMOD_OBJECTS.items()}
#: LineMOD objects evaluated with ADD-S (standard protocol; BOP ``lm`` object ids 10 and 11).
LINEMOD_SYMMETRIC: tuple[str, ...] = ("eggbox", "glue")
#: The 13 objects of the standard LineMOD protocol (bowl and cup excluded).
LINEMOD_13: tuple[int, ...] = tuple(i for i in LINEMOD_OBJECTS if i not in (3, 7))
