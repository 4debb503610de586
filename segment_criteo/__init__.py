"""The operator command line of segment-criteo-sync (`segment-criteo --help`)."""
