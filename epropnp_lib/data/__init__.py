"""Dataset readers, format-faithful generators and synthetic data (ROS-free)."""
