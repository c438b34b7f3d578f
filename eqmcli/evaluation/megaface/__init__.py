"""MegaFace challenge 1 (FaceScrub probes against up to 1 M distractors): `files` reads the
published lists, `protocol` runs the search."""
