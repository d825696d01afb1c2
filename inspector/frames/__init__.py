"""Frames and where they come from: image decoding, folder listing, cameras, streams, video files.

Knows nothing of models: it hands ``Frame``s (numpy uint8 BGR images) to the floors above.
"""
