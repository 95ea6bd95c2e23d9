"""Weight loss landscapes: filter-normalized directions, curves and surfaces, h5 storage."""
