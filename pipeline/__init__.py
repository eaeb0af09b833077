"""mirrorseed: publish a package-mirror snapshot as torrents, a signed index and static listings."""
