"""Format-faithful synthetic data writers: nuScenes-format street scenes, BOP-format object
scenes and rendered object crops. They stand in for the real datasets on a machine without them;
nothing in the library's core imports them."""
