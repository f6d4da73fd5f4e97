"""Vector store backends, the Ray Data embedding pipeline and S3 bulk reindexing."""
