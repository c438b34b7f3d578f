"""IJB-B / IJB-C 1:1 verification and 1:N search: `files` reads the published layout,
`protocol` embeds, aggregates templates and scores."""
