"""Networks that predict 2D-3D correspondences and weights for the EPro-PnP layer."""
