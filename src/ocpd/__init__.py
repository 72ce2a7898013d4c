"""ocpd: the reference node of the OpenCognition Protocol."""

__version__ = "0.1.0"
