"""Layer graphs of the four models, one module each, built from the pyworkloads configs."""
