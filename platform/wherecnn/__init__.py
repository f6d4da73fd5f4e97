"""wherecnn: ground-to-aerial geolocalization at city scale."""

__version__ = "0.1.0"
