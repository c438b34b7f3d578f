"""YouTube Faces: `files` reads the frame folders and ``splits.txt``, `protocol` scores the
video pairs (10 splits)."""
