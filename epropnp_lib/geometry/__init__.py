"""Geometry: rotations, poses and their manifolds, pinhole projection with Jacobians."""
