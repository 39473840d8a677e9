"""Build DFOTA targetfiles and update packages for Quectel RG520N / RG52xF QuecOpen modules."""

__version__ = "0.1.0"
