"""Geometry: rotations, poses and their manifolds, pinhole projection with Jacobians, pixel grids
and image affines, 3D boxes, object symmetries, and a batched triangle rasteriser."""
