"""InterCLR study toolkit: MoCo v2 plus the inter-image branch, driven by study files."""

__version__ = "0.1.0"
