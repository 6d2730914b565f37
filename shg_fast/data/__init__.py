"""Datasets: MPII (annotation .h5 + image folder, with the paper's augmentation) and synthetic
stick figures. Import the submodules: :mod:`.mpii`, :mod:`.synthetic`."""
