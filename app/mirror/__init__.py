"""The pull-through cache: upstream registries mounted under prefixes of Berth's namespace."""
