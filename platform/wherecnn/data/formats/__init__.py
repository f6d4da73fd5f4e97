"""Format adapters: VIGOR, CVUSA, generic tables, GeoTIFF orthomosaics -> the three manifests."""
