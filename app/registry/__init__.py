"""Domain services: what blobs, uploads, manifests and tags are. Never imports flask."""
