"""Q4: split a table into signal and noise by the signs of its two leading PCA scores."""

__version__ = "0.1.0"
