"""Data: decoding, preprocessing, splits, the pixel cache, data sources and offline assets."""
