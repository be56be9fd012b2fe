"""Image normalization: decode, check, orient and size every image the backends see."""
